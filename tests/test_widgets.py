"""The app's logic without a browser: set values, click buttons, and check the config and the calls each panel makes.

The library functions are replaced by recorders, so this runs in a second; `test_browser.py` runs the real ones.
"""
import threading
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
        return SimpleNamespace(total_gib=c.lora.r / 1024, components={'LoRA adapters': c.lora.r / 1024}, budget_gib=None, fits=None)
    def prepare(self, c):
        self.calls.append(('prepare', c.data.sequence_len))
        return SimpleNamespace(train=['a', 'b', 'c'], report='data.datasets[0]  messages  3 rows in  3 kept'), 'tok'
    def train(self, c, background=True, view=None):
        self.calls.append(('train', c.training.max_steps, c.lora.r))
        done = threading.Event()
        return SimpleNamespace(stop=done.set, done=False, wait=lambda: SimpleNamespace(history=[dict(step=3, loss=1.5)], stopped=False))
    def merge(self, c):
        self.calls.append(('merge', c.output.merge_mode))
        return c.output.output_dir
    def export(self, c):
        self.calls.append(('export', tuple(c.output.gguf_types)))
        return []


def test_model_choice_to_export_without_code(tmp_path):
    from qlora_nb.ui import app
    rec, c = Recorder(), Config()
    a = app(c, estimate=rec.estimate, prepare=rec.prepare, render=lambda d, t, i: f'<pre>{d.train[i]}</pre>', histogram=lambda d: None,
            train=rec.train, make_view=lambda: SimpleNamespace(widget=__import__('ipywidgets').HTML()), merge=rec.merge, export=rec.export, delay=0)
    model, data, train, export = (a.panels[k] for k in ('Model', 'Data', 'Train', 'Export'))

    lora = model.widget.children[0].children[-3].settings
    lora['lora.r'].input.value = 64
    assert c.lora.r == 64 and ('estimate', 64) in rec.calls and '64.0 MiB' in model.memory.text

    data.widget.children[1].settings['data.sequence_len'].input.value = '512'
    data.check_button.click(); _join_tasks(a)
    data.next_button.click(); _join_tasks(a)
    assert data.output.value == '<pre>b</pre>' and 'messages' in data.accounting.value
    assert rec.calls.count(('prepare', 512)) == 1, 'processed once for the same settings'

    train.widget.children[1].children[0].settings['training.max_steps'].input.value = '3'
    train.start_button.click(); _join_tasks(a)
    assert ('train', 3, 64) in rec.calls and train.status.text.startswith('Finished: 3 steps')

    export.widget.children[1].settings['output.merge_mode'].input.value = 'dequantized'
    export.merge_button.click(); _join_tasks(a)
    assert ('merge', 'dequantized') in rec.calls and 'Merging done' in export.status.text

    save, load = a.files.children[0].children[1:]
    a.files.children[0].children[0].value = str(tmp_path/'run.yaml')
    save.click()
    saved = load_config(tmp_path/'run.yaml')
    assert (saved.lora.r, saved.data.sequence_len, saved.training.max_steps, saved.output.merge_mode) == (64, 512, 3, 'dequantized')


def test_errors_are_one_line_in_the_panel():
    from qlora_nb.ui import app
    def bad_estimate(c): raise QloraError(f'model.base_model: {c.model.base_model} has no config.json. Fix: give a model folder or hub id.')
    a = app(Config(), estimate=bad_estimate, delay=0)
    assert 'has no config.json. Fix:' in a.panels['Model'].memory.status.text
    assert 'Traceback' not in a.panels['Model'].memory.status.widget.value.split('<details>')[0]
    r = a.panels['Model'].widget.children[0].children[-3].settings['lora.r']
    r.input.value = 0
    assert 'lora.r' in r.error.value and a.config.lora.r == 16
