"""Docs without Quarto (which these machines cannot install).

    python .ci/docs.py readme          # write README.md from nbs/index.ipynb
    python .ci/docs.py check-readme    # fail if README.md is not what index.ipynb makes
    python .ci/docs.py build [OUT]     # nbdev's processing of every notebook, then nbconvert to HTML (default _docs/)

`build` also checks that every output a notebook keeps (a report, a table, a plot) is on its page.

`nbdev_docs` (with Quarto) renders the same processed notebooks where Quarto exists. A notebook whose
processing or conversion fails makes `build` exit non-zero, so CI catches docs that would not render.
"""
import html, re, sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter, MarkdownExporter

ROOT = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r'^\s*#\s*\|')


def readme_text() -> str:
    "README.md as index.ipynb makes it: hidden cells dropped, `#|` directive lines removed."
    nb = nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4)
    keep = []
    for c in nb.cells:
        lines = c.source.splitlines()
        if c.cell_type == 'code' and any(re.match(r'^\s*#\s*\|\s*hide\b', l) for l in lines): continue
        c.source = '\n'.join(l for l in lines if not DIRECTIVE.match(l))
        keep.append(c)
    nb.cells = keep
    nb.metadata['language_info'] = {'name': 'python'}
    body, _ = MarkdownExporter().from_notebook_node(nb)
    head = '<!-- Generated from nbs/index.ipynb by `python .ci/docs.py readme`: edit the notebook, not this file. -->\n\n'
    return head + re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'


def syntax_errors() -> int:
    "Compile every code cell (nbdev's processing only runs some cells, and skips cells that do not parse)."
    bad = 0
    for p in sorted((ROOT/'nbs').rglob('*.ipynb')):
        for i, c in enumerate(nbformat.read(p, as_version=4).cells):
            if c.cell_type != 'code': continue
            src = '\n'.join(l for l in c.source.splitlines() if not l.lstrip().startswith(('%', '!')))
            try: compile(src, f'{p.name} cell {i}', 'exec')
            except SyntaxError as e:
                bad += 1
                print(f'docs: FAILED {p.relative_to(ROOT)} cell {i} line {e.lineno}: {e.msg}', file=sys.stderr)
    return bad


ANSI = re.compile(r'\x1b\[[0-9;]*m')

def output_marks(o) -> list[str]:
    "Short pieces of a kept output that its HTML page must contain: a line of text, or the start of an image."
    d = o.get('data', {})
    if 'image/png' in d: return [d['image/png'].replace('\n', '')[:60]]
    text = o.get('text', '') if o.get('output_type') == 'stream' else d.get('text/html') or d.get('text/markdown') or d.get('text/plain', '')
    if 'text/html' in d: text = re.sub(r'<[^>]+>', '\n', text)
    lines = [l.strip() for l in ANSI.sub('', html.unescape(text if isinstance(text, str) else ''.join(text))).splitlines()]
    return [l[:60] for l in lines if l][:1]


def missing_outputs(out: Path) -> int:
    "For every notebook that keeps outputs, check that its page shows each of them; returns the number missing."
    bad = 0
    for p in sorted((ROOT/'nbs').rglob('*.ipynb')):
        if '.ipynb_checkpoints' in p.parts: continue
        marks = [m for c in nbformat.read(p, as_version=4).cells if c.cell_type == 'code' for o in c.get('outputs', []) for m in output_marks(o)]
        if not marks: continue
        page = out/p.relative_to(ROOT/'nbs').with_suffix('.html')
        text = html.unescape(page.read_text(encoding='utf-8')) if page.exists() else ''
        lost = [m for m in marks if m not in text]
        for m in lost: print(f'docs: FAILED {page.name} lacks an output {p.name} keeps: {m!r}', file=sys.stderr)
        bad += len(lost)
        if not lost: print(f'docs: {page.name} shows the {len(marks)} outputs {p.name} keeps')
    return bad


def build(out: Path) -> int:
    "Process the notebooks as nbdev_docs does, then convert each to HTML; returns the number of failures."
    import os
    os.chdir(ROOT)
    if syntax_errors(): return 1
    from nbdev.serve import proc_nbs
    proc = proc_nbs(force=True, n_workers=0)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for nb_path in sorted(proc.rglob('*.ipynb')):
        try:
            html, _ = HTMLExporter(template_name='lab').from_notebook_node(nbformat.read(nb_path, as_version=4))
            dest = out/nb_path.relative_to(proc).with_suffix('.html')
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(html, encoding='utf-8')
            print(f'docs: {dest}')
        except Exception as e:
            failed += 1
            print(f'docs: FAILED {nb_path.relative_to(proc)}: {e}', file=sys.stderr)
    expected = sorted(p.relative_to(ROOT/'nbs').with_suffix('') for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    made = sorted(p.relative_to(out).with_suffix('') for p in out.rglob('*.html'))
    for missing in sorted(set(expected) - set(made)):
        failed += 1
        print(f'docs: FAILED {missing}.ipynb was not rendered', file=sys.stderr)
    return failed + missing_outputs(out)


if __name__ == '__main__':
    cmd = sys.argv[1] if len(sys.argv) > 1 else ''
    if cmd == 'readme':
        (ROOT/'README.md').write_text(readme_text(), encoding='utf-8')
    elif cmd == 'check-readme':
        if (ROOT/'README.md').read_text(encoding='utf-8') != readme_text():
            sys.exit('README.md is not what nbs/index.ipynb makes: run `python .ci/docs.py readme` and commit README.md.')
    elif cmd == 'build':
        sys.exit(1 if build(Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT/'_docs') else 0)
    else:
        sys.exit(__doc__)
