"""The notebook app in a real browser: JupyterLab on 127.0.0.1, driven by Playwright with Debian's Chromium.

Opens a notebook that builds `qlora_nb.app()` on the tiny default config, runs it, uses every panel, asserts on
the text the page renders, fails on JavaScript errors, and saves a screenshot of each step under
`$QLORA_NB_ARTIFACTS/browser` (or a temporary folder; the path is printed). `.ci/browser-deps` installs Chromium.
"""
import json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'

NOTEBOOK_CELLS = [
    "import qlora_nb\n"
    "c = qlora_nb.Config()\n"
    "c.training.max_steps = 40\n"
    "c.training.logging_steps = 1\n"
    "c.output.output_dir = 'outputs/browser-run'\n"
    "a = qlora_nb.app(c)\n"
    "a",
    "print('r is', c.lora.r)",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _notebook(path:Path):
    cells = [dict(cell_type='code', source=src, metadata={}, outputs=[], execution_count=None, id=f'c{i}') for i, src in enumerate(NOTEBOOK_CELLS)]
    nb = dict(cells=cells, metadata=dict(kernelspec=dict(name='python3', display_name='Python 3', language='python')), nbformat=4, nbformat_minor=5)
    path.write_text(json.dumps(nb))


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server in `tmp_path` on a free port with a token; yields (url of the notebook, root)."
    root, home = tmp_path/'work', tmp_path/'home'
    root.mkdir(); home.mkdir()
    _notebook(root/'app.ipynb')
    settings = home/'lab-settings'/'@jupyterlab'/'apputils-extension'
    settings.mkdir(parents=True)
    (settings/'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    tracker = home/'lab-settings'/'@jupyterlab'/'notebook-extension'
    tracker.mkdir(parents=True)
    (tracker/'tracker.jupyterlab-settings').write_text(json.dumps({'autoStartDefaultKernel': True}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home/'config'), JUPYTER_RUNTIME_DIR=str(home/'runtime'),
               JUPYTERLAB_SETTINGS_DIR=str(home/'lab-settings'), JUPYTERLAB_WORKSPACES_DIR=str(home/'workspaces'),
               OMP_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false')
    log = open(tmp_path/'jupyter.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyter', 'lab', '--no-browser', f'--port={port}', '--ServerApp.ip=127.0.0.1',
                             f'--ServerApp.root_dir={root}', f'--IdentityProvider.token={token}', '--ServerApp.port_retries=0', '--allow-root'],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2)
                break
            except OSError:
                if proc.poll() is not None: pytest.fail(f'JupyterLab exited: {(tmp_path/"jupyter.log").read_text()[-3000:]}')
                time.sleep(0.5)
        else: pytest.fail('JupyterLab did not start in 60 s')
        # Start the notebook's kernel through the REST API, so the page opens attached to it (no kernel dialog).
        req = urllib.request.Request(f'{base}/api/sessions', method='POST', headers={'Authorization': f'token {token}', 'Content-Type': 'application/json'},
                                     data=json.dumps(dict(path='app.ipynb', name='app.ipynb', type='notebook', kernel=dict(name='python3'))).encode())
        urllib.request.urlopen(req, timeout=60)
        yield f'{base}/lab/tree/app.ipynb?token={token}', root
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()


@pytest.fixture
def shots(tmp_path):
    "The folder for screenshots: `$QLORA_NB_ARTIFACTS/browser`, else a temporary one."
    d = Path(os.environ['QLORA_NB_ARTIFACTS'])/'browser' if os.environ.get('QLORA_NB_ARTIFACTS') else tmp_path/'screenshots'
    d.mkdir(parents=True, exist_ok=True)
    (d/'failure.png').unlink(missing_ok=True)
    print(f'\nbrowser screenshots: {d}')
    return d


def _text(page, selector:str) -> str:
    return page.locator(selector).first.inner_text()


def _wait_text(page, selector:str, pred, timeout:float=120, what:str='') -> str:
    "Poll the text of `selector` until `pred(text)`; fail with the last text seen."
    end, last = time.time() + timeout, ''
    while time.time() < end:
        loc = page.locator(selector)
        if loc.count():
            last = loc.first.inner_text()
            if pred(last): return last
        page.wait_for_timeout(250)
    pytest.fail(f'{what or selector}: not shown within {timeout} s; last text: {last!r}')


def _step(text:str) -> int:
    "The step of the live view's `step N/M` line (0 before the first)."
    m = re.search(r'step (\d+)/\d+', text)
    return int(m[1]) if m else 0


def _shot(page, path:Path):
    "A screenshot of the app (the notebook scrolls inside the page, so a page shot would cut it)."
    page.locator('.qlora-app').first.screenshot(path=path)


def _tab(page, title:str):
    page.locator('.qlora-app .lm-TabBar-tab', has_text=title).first.click()
    page.wait_for_timeout(300)


def _field(page, key:str, within:str=''):
    "The input of the setting `key` (a dotted key such as `lora.r`), found by its CSS class (`css_name`)."
    from qlora_nb.widgets import css_name
    return page.locator(f'{within} .{css_name(key)} input'.strip()).first


def _shown(page, key:str) -> bool:
    "Whether the page has a widget for the setting `key` (an input, a dropdown, ...)."
    from qlora_nb.widgets import css_name
    return page.locator(f'.{css_name(key)}').count() > 0


def _setting(page, key:str, value:str, within:str=''):
    "Type `value` into the input of the setting `key` and commit it."
    box = _field(page, key, within)
    box.fill(value); box.press('Enter')
    page.wait_for_timeout(300)


def _ask(page, text:str, timeout:float=240):
    "Send `text` in the Chat tab and wait for the whole answer (one more answer turn, and the status says so)."
    n = page.locator('.qlora-chat-user').count()
    page.locator('.qlora-chat-prompt textarea').first.fill(text)
    page.locator('.qlora-chat-send').first.click()
    _wait_text(page, '.qlora-chat-panel', lambda t: page.locator('.qlora-chat-user').count() > n and
               _text(page, '.qlora-chat-panel .qlora-status').startswith('Answered in'), timeout, f'the answer to {text!r}')


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='Chromium is not installed: run .ci/browser-deps')
def test_app_in_jupyterlab(lab, shots):
    from playwright.sync_api import sync_playwright
    url, root = lab
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox', '--disable-dev-shm-usage'])
        page = browser.new_page(viewport={'width': 1400, 'height': 1600})
        page.on('console', lambda m: errors.append(f'console: {m.text}') if m.type == 'error' else None)
        page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
        try:
            page.goto(url)
            page.locator('.jp-Notebook').first.wait_for(timeout=60_000)
            page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            select = page.locator('.jp-Dialog button', has_text='Select')
            if select.count(): select.first.click()  # the kernel dialog, should the settings above not be read in time
            page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
            page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
            page.locator('.qlora-app').first.wait_for(timeout=60_000)

            # Model: the estimate appears, and follows the LoRA rank.
            before = _wait_text(page, '.qlora-memory', lambda t: 'estimated peak' in t, what='memory estimate')
            table_before = _text(page, '.qlora-setup-panel')
            _shot(page, shots/'1-model.png')
            r = _field(page, 'lora.r')
            r.fill('64'); r.press('Enter')
            after = _wait_text(page, '.qlora-memory', lambda t: 'estimated peak' in t and t != before, 30, 'memory estimate after r=64')
            assert after != before
            assert _text(page, '.qlora-setup-panel') != table_before
            # A budget too small: the bar turns red and the fixes are listed.
            budget = _field(page, 'training.memory_budget_gib')
            budget.fill('0.3'); budget.press('Enter')
            _wait_text(page, '.qlora-setup-panel', lambda t: 'does NOT fit' in t and 'To fit' in t, 60, 'the fixes for a small budget')
            _shot(page, shots/'2-model-r64.png')
            budget.fill(''); budget.press('Enter')
            _wait_text(page, '.qlora-memory', lambda t: 'no memory_budget_gib' in t, 30, 'the estimate without a budget')
            # Load: the real model with its adapters, and the trainable-parameter report.
            page.locator('.qlora-load-model').first.click()
            _wait_text(page, '.qlora-load-report', lambda t: 'trainable params' in t, 180, 'the trainable-parameter report')
            _shot(page, shots/'2b-model-loaded.png')
            # A model folder that does not exist: the old report goes (greyed at the edit, cleared by the failed Load),
            # the estimate's bar empties, and the error shows right under Load.
            base = _field(page, 'model.base_model')
            base.fill('/nonexistent/model-folder'); base.press('Enter')
            _wait_text(page, '.qlora-load-report', lambda t: 'outdated: settings changed, press Load again' in t, 30, 'the report marked outdated')
            page.locator('.qlora-load-model').first.click()
            _wait_text(page, '.qlora-load-model + .qlora-status', lambda t: t.strip() and not t.startswith('Loading'), 120, 'the Load error beside Load')
            assert _text(page, '.qlora-load-report').strip() == '', 'the old load report stays beside the error'
            _wait_text(page, '.qlora-memory', lambda t: 'estimated peak' not in t, 30, 'the old estimate cleared')
            _shot(page, shots/'2c-model-missing-folder.png')
            base.fill('builtin:tiny-llama'); base.press('Enter')
            _wait_text(page, '.qlora-memory', lambda t: 'estimated peak' in t, 60, 'the estimate back')

            # Data: preview row 0.
            _tab(page, 'Data')
            page.locator('.qlora-check-data').first.click()
            _wait_text(page, '.qlora-data-report', lambda t: 'messages' in t and 'training sequences' in t, 180, 'data accounting')
            page.locator('.qlora-preview').first.click()
            _wait_text(page, '.qlora-preview-output', lambda t: len(t.strip()) > 20, 180, 'preview of row 0')
            _shot(page, shots/'3-data-preview.png')
            # The fix of a malformed line names data.on_bad_rows: it is in the Data tab's form.
            assert _shown(page, 'data.on_bad_rows') and _shown(page, 'data.datasets[0].system_prompt')
            # A sequence_len too short for every row: the table and preview are marked outdated at the edit, the failed
            # check clears the table (no stale "1 training sequence" above a "0 training sequences" error), and the
            # error shows under Check data, not under the preview.
            seq = _field(page, 'data.sequence_len')
            seq.fill('16'); seq.press('Enter')
            _wait_text(page, '.qlora-data-report', lambda t: 'outdated: settings changed, press Check data again' in t, 30, 'the table marked outdated')
            assert 'outdated' in _text(page, '.qlora-preview-output')
            page.locator('.qlora-check-data').first.click()
            err = _wait_text(page, '.qlora-check-data + .qlora-check-status', lambda t: 'no training rows' in t, 180, 'the check error beside Check data')
            assert '0 training sequences' in err, err
            assert _text(page, '.qlora-data-report').strip() == '', 'a stale table stays above the error'
            _shot(page, shots/'3b-data-too-short.png')
            seq.fill('2048'); seq.press('Enter')
            _wait_text(page, '.qlora-preview-output', lambda t: 'outdated' not in t and len(t.strip()) > 20, 30, 'the preview current again')

            # Train: start, see the live view, stop.
            _tab(page, 'Train')
            page.locator('.qlora-train-start').first.click()
            # The progress line counts steps, and the plot is redrawn as they come.
            _wait_text(page, '.qlora-train-view', lambda t: _step(t) >= 2, 300, 'live training view at step 2')
            plot = page.locator('.qlora-train-view img').first
            first = plot.get_attribute('src')
            _wait_text(page, '.qlora-train-view', lambda t: _step(t) >= 4 and plot.get_attribute('src') != first, 120, 'the plot changing')
            assert first and plot.bounding_box()['height'] > 100, 'the loss plot is not shown'
            _shot(page, shots/'4-train-running.png')
            # The kernel is free while training: another cell runs, and sees the rank set in the Model tab.
            page.locator('.jp-Cell').nth(1).locator('.jp-InputArea-editor').first.click()
            page.keyboard.press('Shift+Enter')
            _wait_text(page, '.jp-Cell >> nth=1', lambda t: 'r is 64' in t, 30, 'a cell run during training')
            page.locator('.qlora-train-stop').first.click()
            _wait_text(page, '.qlora-train-panel .qlora-status', lambda t: t.startswith('Finished'), 300, 'end of training')
            # The live view says where it trained (issue 15, point 5), and the panel has one Stop button, not two.
            assert re.match(r'device: (CPU|GPU)', _text(page, '.qlora-train-device')), _text(page, '.qlora-train-device')
            assert page.locator('.qlora-train-panel button', has_text='Stop').count() == 1
            _shot(page, shots/'5-train-done.png')

            # Chat: load; the generation settings are in the tab and each answer follows them.
            _tab(page, 'Chat')
            page.locator('.qlora-chat-load').first.click()
            _wait_text(page, '.qlora-chat-panel .qlora-status', lambda t: t.startswith('Loaded'), 180, 'chat model loaded')
            _setting(page, 'chat.max_new_tokens', '4')
            _ask(page, 'What is the capital of France?')
            first = _text(page, '.qlora-chat-answer .qlora-chat-text')
            assert len(first) < 100, f'an answer of at most 4 tokens is {len(first)} characters: {first!r}'
            # Compare with base, twice: the base side answers from its own conversation (its own first answer, not the
            # question asked without comparing), which the folded prompt of each side shows.
            _setting(page, 'chat.temperature', '1')
            page.locator('.qlora-chat-compare input').first.check()
            _ask(page, 'Name a colour.')
            base1 = page.locator('.qlora-chat-base .qlora-chat-text').first.text_content()
            _ask(page, 'And another one?')
            base_sent = page.locator('.qlora-chat-base .qlora-chat-sent pre').last.text_content()
            tuned_sent = page.locator('.qlora-chat-fine-tuned .qlora-chat-sent pre').last.text_content()
            assert base1 in base_sent and 'Name a colour.' in base_sent and 'And another one?' in base_sent, base_sent
            assert 'What is the capital of France?' not in base_sent and 'What is the capital of France?' in tuned_sent, (base_sent, tuned_sent)
            # Stop ends a long answer at once; the partial answer is kept, marked stopped. Greedy, the untrained base
            # side of a comparison rambles on (the fine-tuned side may say its end-of-turn token at once).
            _setting(page, 'chat.max_new_tokens', '2000')
            _setting(page, 'chat.temperature', '0')
            n = page.locator('.qlora-chat-user').count()
            page.locator('.qlora-chat-prompt textarea').first.fill('Tell me a long story.')
            page.locator('.qlora-chat-send').first.click()
            _wait_text(page, '.qlora-chat-panel', lambda t: page.locator('.qlora-chat-user').count() > n and
                       len(page.locator('.qlora-chat-answer .qlora-chat-text').last.text_content().strip()) > 0, 120, 'the long answer streaming')
            page.locator('.qlora-chat-stop').first.click()
            _wait_text(page, '.qlora-chat-panel .qlora-status', lambda t: t.startswith('Stopped after'), 60, 'the answer stopped')
            assert 'stopped' in _text(page, '.qlora-conversation').split('Tell me a long story.')[-1]
            _shot(page, shots/'6-chat.png')

            # Export: merge, then GGUF; the merged folder stays listed beside the GGUF files.
            _tab(page, 'Export')
            assert all(f'{m}:' in _text(page, '.qlora-merge-mode-help') for m in ('base', 'dequantized')), 'merge_mode is not explained'
            assert 'exporting: q8_0' in _text(page, '.qlora-gguf-chosen')
            page.locator('.qlora-merge').first.click()
            _wait_text(page, '.qlora-export-panel .qlora-status', lambda t: t.startswith('Merging done'), 300, 'merge')
            assert 'merged' in _text(page, '.qlora-export-paths')
            page.locator('.qlora-export').first.click()
            _wait_text(page, '.qlora-export-panel .qlora-status', lambda t: t.startswith('Exporting done'), 300, 'GGUF export')
            assert '.gguf' in _text(page, '.qlora-export-export-result')
            assert 'merged' in _text(page, '.qlora-export-merge-result'), 'the merged folder is no longer listed after the export'
            _shot(page, shots/'7-export.png')

            # Config: the YAML shows what the panels set, and the kernel saw it too.
            _tab(page, 'Config')
            assert 'r: 64' in _text(page, '.qlora-yaml')
            _shot(page, shots/'8-config.png')

            # Train again with a learning rate 50,000 times too high (issue 15, point 2): the guards' warnings are
            # shown in the Train tab, and the run does not end in a plain green "Finished". Its own folder, so the
            # adapter the Chat and Export tabs used stays as it was.
            _tab(page, 'Train')
            for key, value in (('training.learning_rate', '10'), ('training.max_steps', '3'),
                               ('output.output_dir', 'outputs/browser-lr10')):
                _setting(page, key, value, within='.qlora-train-panel')
            page.locator('.qlora-train-start').first.click()
            _wait_text(page, '.qlora-train-panel .qlora-status', lambda t: t.startswith('Training'), 60, 'the lr-10 run starting')
            status = _wait_text(page, '.qlora-train-panel .qlora-status', lambda t: t and not t.startswith('Training'), 400, 'end of the lr-10 run')
            assert status.startswith('Finished with') and 'warning' in status and 'learning_rate' in status, status
            assert 'learning_rate: 10 is far above' in _text(page, '.qlora-train-warnings')
            _shot(page, shots/'9-train-warned.png')

            _tab(page, 'Config')
            # Config: any setting by its dotted key (the `--set` syntax), a list item included; every tab follows.
            page.locator('.qlora-set input').first.fill('data.datasets[0].path=my/persona.jsonl')
            page.locator('.qlora-set-apply').first.click()
            _wait_text(page, '.qlora-yaml', lambda t: 'path: my/persona.jsonl' in t, 30, 'the YAML after the set box')
            assert 'data.datasets[0].path' in _text(page, '.qlora-set-status')
            page.locator('.qlora-set input').first.fill('data.datasets[5].path=x')
            page.locator('.qlora-set-apply').first.click()
            _wait_text(page, '.qlora-set-status', lambda t: 'data.datasets[5]' in t and 'has 1 item' in t, 30, 'the error for a bad index')
            _shot(page, shots/'10-config-set.png')
            _tab(page, 'Data')
            assert _field(page, 'data.datasets[0].path').input_value() == 'my/persona.jsonl'
        except BaseException:
            page.screenshot(path=shots/'failure.png', full_page=True)
            print('page text at the failure:\n' + page.locator('.jp-Notebook').first.inner_text()[-4000:], '\nerrors:', errors)
            raise
        finally: browser.close()
    assert not errors, 'JavaScript errors in the page:\n' + '\n'.join(errors)
