"""The layer rule of qlora_nb, checked on the modules' source (no import is run).

    python .ci/layers.py [PACKAGE_DIR]      # default: qlora_nb next to this folder

Each module belongs to a layer (LAYERS, lowest first) and may import its own layer and the ones below, never one
above. Also refused: a cycle between modules (even inside one layer), an import of one of our modules inside a
function (imports sit at the top; only the heavy or optional third-party packages in LAZY may wait for first use),
a heavy package imported at the top of a module outside the ui layer (`import qlora_nb.train` must stay light:
`train(num_gpus=2)` forks before bitsandbytes loads), and a private name (leading underscore) of another of our
modules. Prints one line per violation (module:line, what, the fix), then the figures; exits 1 on any violation.
"""
import ast, sys
from collections import defaultdict
from pathlib import Path

# Lowest first. A new module is added to the layer whose modules it imports and that imports it.
LAYERS = {
    'core': ['__init__', 'errors', 'keys', 'utils', 'tiny', 'builtin', 'templates', 'axolotl', 'config'],
    'data': ['loading', 'formats', 'tokenizing', 'packing', 'data', 'preview', 'preference'],
    'model': ['model', 'lora', 'estimate', 'kernels', 'offload', 'graphs'],
    'run': ['live', 'guards', 'checkpoints', 'train', 'preference_train', 'multigpu'],
    'infer/export': ['chat', 'merge', 'export', 'demo'],
    'ui': ['widgets', 'setup_panel', 'data_panel', 'train_panel', 'chat_panel', 'export_panel', 'ui'],
    'cli': ['cli', '__main__'],
}
# Third-party packages that are heavy at import (seconds, a GPU library, a forked process's state) or optional
# (not in every install: the GPU image has no fastcore): imported inside the function that needs them.
LAZY = {'torch', 'transformers', 'peft', 'trl', 'bitsandbytes', 'datasets', 'accelerate', 'liger_kernel', 'ipywidgets',
        'matplotlib', 'IPython', 'gguf', 'llama_cpp', 'deepspeed', 'safetensors', 'tokenizers', 'pyarrow', 'numpy',
        'fastcore', 'filelock', 'psutil', 'xllamacpp'}
TOP_HEAVY_OK = {'ui'}  # the panels need ipywidgets to define their classes; `import qlora_nb` does not load them
SKIP = {'_modidx'}     # nbdev's generated index

def layer_of(): return {m: i for i, ms in enumerate(LAYERS.values()) for m in ms}

def own_targets(node, mod, mods, pkg):
    "The (our module, names imported from it) pairs of an import statement in module `mod`."
    if isinstance(node, ast.Import):
        return [(a.name.split('.')[1], []) for a in node.names if a.name.startswith(pkg + '.')] + \
               [('__init__', []) for a in node.names if a.name == pkg]
    base = node.module or ''
    if node.level == 0 and base != pkg and not base.startswith(pkg + '.'): return []
    base = base.removeprefix(pkg).lstrip('.') if node.level == 0 else base
    if base: return [(base.split('.')[0], [a.name for a in node.names])]
    # `from . import x` / `from qlora_nb import x`: a module, or a name of the package
    return [(a.name, []) if a.name in mods else ('__init__', [a.name]) for a in node.names]

def third_party(node):
    "Top-level package names a non-own import statement imports."
    if isinstance(node, ast.Import): return [a.name.split('.')[0] for a in node.names]
    return [node.module.split('.')[0]] if node.level == 0 and node.module else []

def scan(pkg_dir: Path):
    pkg = pkg_dir.name
    mods = {p.stem: p for p in sorted(pkg_dir.glob('*.py')) if p.stem not in SKIP}
    layer, names = layer_of(), list(LAYERS)
    graph, out = defaultdict(dict), []
    counts = defaultdict(int)
    for m, path in mods.items():
        tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
        if m not in layer:
            out.append(f'{pkg}/{m}.py:1: module {m} has no layer. Fix: add it to LAYERS in .ci/layers.py.')
            continue
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                 for n in ast.walk(f) if n is not f}
        aliases = {}  # local name -> our module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                lazy, where = id(node) in inner, f'{pkg}/{m}.py:{node.lineno}'
                targets = own_targets(node, m, mods, pkg)
                for t, imported in targets:
                    if t == m or t not in mods: continue
                    graph[m].setdefault(t, node.lineno); counts['own imports'] += 1
                    if t in layer and layer[t] > layer[m]:
                        counts['upward'] += 1
                        out.append(f'{where}: {m} ({names[layer[m]]}) imports {t} ({names[layer[t]]}), a higher layer. '
                                   f'Fix: move the code that needs {t} up, or what it uses from {t} down.')
                    if lazy:
                        counts['own lazy'] += 1
                        out.append(f'{where}: {m} imports our module {t} inside a function. Fix: import it at the top '
                                   f'(if {t} is heavy at import, make its heavy third-party imports lazy instead).')
                    for n in imported:
                        if n.startswith('_') and not n.startswith('__'):
                            counts['private'] += 1
                            out.append(f'{where}: {m} imports the private {t}.{n}. Fix: make it public in {t} '
                                       '(a name without the underscore and a docstring), or move it where it is used.')
                    if isinstance(node, ast.Import): aliases[(node.names[0].asname or node.names[0].name)] = t
                    elif not imported or t in imported: pass
                for a in getattr(node, 'names', []):
                    if isinstance(node, ast.ImportFrom) and a.name in mods and any(t == a.name for t, _ in targets):
                        aliases[a.asname or a.name] = a.name
                if targets: continue
                for p in third_party(node):
                    if lazy and p not in LAZY:
                        counts['light lazy'] += 1
                        out.append(f'{where}: {m} imports {p} inside a function; only the heavy or optional '
                                   f'packages in LAZY (.ci/layers.py) may wait. Fix: import {p} at the top of {m}.')
                    if not lazy and p in LAZY and names[layer[m]] not in TOP_HEAVY_OK:
                        counts['heavy at top'] += 1
                        out.append(f'{where}: {m} imports {p} at the top, so importing {m} loads it. Fix: import it '
                                   f'inside the functions that use it.')
        for node in ast.walk(tree):  # `train._train` where `train` names our module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith('_') and not node.attr.startswith('__') and aliases[node.value.id] != m):
                counts['private'] += 1
                out.append(f'{pkg}/{m}.py:{node.lineno}: {m} uses the private {aliases[node.value.id]}.{node.attr}. '
                           'Fix: make it public, or move it where it is used.')
    cycles = find_cycles(graph)
    for c in cycles:
        path = ' -> '.join(f'{a} ({pkg}/{a}.py:{graph[a][b]})' for a, b in zip(c, c[1:] + c[:1]))
        out.append(f'{pkg}/{c[0]}.py:{graph[c[0]][c[1 % len(c)]]}: import cycle {path} -> {c[0]}. Fix: move what the '
                   'lower module needs from the higher one down, or merge the two.')
    counts['cycles'] = len(cycles)
    return out, counts, len(mods)

def find_cycles(graph) -> list[list[str]]:
    "One cycle (as a list of modules) per strongly connected component of more than one module (Tarjan)."
    index, low, stack, on, comps, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, {}):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: comps.append(set(comp))
    for v in list(graph): 
        if v not in index: visit(v)
    return [shortest_cycle(graph, c) for c in comps]

def shortest_cycle(graph, comp: set) -> list[str]:
    "A shortest cycle through the alphabetically first module of `comp`, found breadth-first."
    start = min(comp); prev, todo = {start: None}, [start]
    for v in todo:
        for w in sorted(graph.get(v, {})):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None: path.append(prev[path[-1]])
                return path[::-1]
            if w in comp and w not in prev: prev[w] = v; todo.append(w)
    return sorted(comp)

def main(argv):
    pkg_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent/'qlora_nb'
    out, counts, n = scan(pkg_dir)
    for line in out: print(line)
    print(f'layers: {n} modules; imports of our modules: {counts["own imports"]}; upward: {counts["upward"]}; '
          f'cycles: {counts["cycles"]}; own imports inside functions: {counts["own lazy"]}; '
          f'light packages imported inside functions: {counts["light lazy"]}; heavy packages at the top: '
          f'{counts["heavy at top"]}; private names across modules: {counts["private"]}')
    print('OK: the layer rule holds.' if not out else f'FAILED: {len(out)} violation(s) of the layer rule (above).')
    return 1 if out else 0

if __name__ == '__main__': sys.exit(main(sys.argv))
