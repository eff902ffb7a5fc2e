"""The app's logic without a browser: set values, click buttons, and check the config and the calls each panel makes.

The library functions are replaced by recorders, so this runs in a second; `test_browser.py` runs the real ones.
"""
import subprocess, sys, threading
from types import SimpleNamespace
import pytest
from qlora_nb.config import Config, QloraError, load_config

pytest.importorskip('ipywidgets')


def _join_tasks(app):
    for p in app.panels.values():
        if getattr(p, 'task', None) is not None: p.task.join(10)


class Recorder:
    "Stand-ins for the library: each call is recorded with the settings it saw."
    def __init__(self): self.calls = []
    def estimate(self, c):
        self.calls.append(('estimate', c.lora.r))
        gib = c.lora.r / 1024
        return SimpleNamespace(total_gib=gib, components={'LoRA adapters': gib}, budget_gib=None, fits=None)
    def prepare_data(self, c, tok):
        self.calls.append(('prepare', c.data.sequence_len))
        return SimpleNamespace(train=['a', 'b', 'c'], report='data.datasets[0]  messages  3 rows in  3 kept')
    def train(self, c, background=True, view=None):
        self.calls.append(('train', c.training.max_steps, c.lora.r))
        done = threading.Event()
        result = SimpleNamespace(history=[dict(step=3, loss=1.5)], stopped=False)
        return SimpleNamespace(stop=done.set, done=False, wait=lambda: result)
    def merge(self, c):
        self.calls.append(('merge', c.output.merge_mode))
        return c.output.output_dir
    def export(self, c):
        self.calls.append(('export', tuple(c.output.gguf_types)))
        return []


    def backend(self):
        "A `Backend` whose slow functions are this recorder's."
        import ipywidgets
        from matplotlib.figure import Figure
        from qlora_nb.widgets import Backend
        return Backend(estimate=self.estimate, load_tokenizer=lambda c: 'tok', prepare_data=self.prepare_data,
                       preview_sample=lambda d, tok, i, mode: f'<pre>{d.train[i]}</pre>',
                       length_histogram=lambda report: Figure((1, 1)), train=self.train,
                       NotebookView=lambda **kw: SimpleNamespace(widget=ipywidgets.HTML()),
                       merge=self.merge, export=self.export)


def test_model_choice_to_export_without_code(tmp_path):
    from qlora_nb.ui import app
    rec, c = Recorder(), Config()
    a = app(c, rec.backend(), delay=0)
    model, data, train, export = (a.panels[k] for k in ('Model', 'Data', 'Train', 'Export'))

    model.field('lora.r').input.value = 64
    assert c.lora.r == 64 and ('estimate', 64) in rec.calls and '64.0 MiB' in model.memory.text

    data.field('data.sequence_len').input.value = '512'
    data.check_button.click(); _join_tasks(a)
    data.next_button.click(); _join_tasks(a)
    assert data.output.value == '<pre>b</pre>' and 'messages' in data.accounting.value
    assert rec.calls.count(('prepare', 512)) == 1, 'processed once for the same settings'

    train.field('training.max_steps').input.value = '3'
    train.start_button.click(); _join_tasks(a)
    assert ('train', 3, 64) in rec.calls and train.status.text.startswith('Finished: 3 steps')

    export.field('output.merge_mode').input.value = 'dequantized'
    export.merge_button.click(); _join_tasks(a)
    assert ('merge', 'dequantized') in rec.calls and 'Merging done' in export.status.text

    a.files.box.value = str(tmp_path/'run.yaml')
    a.files.save_button.click()
    saved = load_config(tmp_path/'run.yaml')
    got = (saved.lora.r, saved.data.sequence_len, saved.training.max_steps, saved.output.merge_mode)
    assert got == (64, 512, 3, 'dequantized')


def test_errors_are_one_line_in_the_panel():
    from qlora_nb.ui import app
    from qlora_nb.widgets import Backend
    def bad_estimate(c):
        raise QloraError(f'model.base_model: {c.model.base_model} has no config.json. '
                         'Fix: give a model folder or hub id.')
    a = app(Config(), Backend(estimate=bad_estimate), delay=0)
    assert 'has no config.json. Fix:' in a.panels['Model'].memory.status.text
    assert 'Traceback' not in a.panels['Model'].memory.status.widget.value.split('<details>')[0]
    r = a.panels['Model'].field('lora.r')
    r.input.value = 0
    assert 'lora.r' in r.error.value and a.config.lora.r == 16


def test_importing_the_app_needs_no_widgets_and_leaves_bitsandbytes_unloaded():
    "`import qlora_nb.ui` imports the library (the panels' backend) but neither ipywidgets (a panel does, when made)"
    " nor bitsandbytes: the app can still start a `training.num_gpus` run, which forks before bitsandbytes loads."
    code = ('import sys, qlora_nb, qlora_nb.ui; '
            'print(sorted(m for m in ("ipywidgets", "bitsandbytes", "peft") if m in sys.modules))')
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == '[]', p.stdout
