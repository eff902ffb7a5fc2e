"End-to-end training on the tiny model (CPU, NF4): exact resume, each guard triggered in a real run, Stop."
import json
from pathlib import Path
import pytest, torch
from transformers import TrainerCallback
from qlora_nb.config import Config, QloraError, QloraWarning
from qlora_nb.guards import GuardStop
from qlora_nb.train import train


def small(out, **train_kw) -> Config:
    c = Config()
    c.output.output_dir = str(out)
    t = c.training
    t.micro_batch_size, t.gradient_accumulation_steps, t.max_steps, t.learning_rate = 4, 2, 6, 2e-3
    t.warmup_ratio, t.warmup_steps = 0.0, 1
    for k, v in train_kw.items(): setattr(t, k, v)
    return c


class Interrupt(TrainerCallback):
    "Simulate a crash right after the checkpoint of step `at` was written."
    def __init__(self, at): self.at = at
    def on_save(self, args, state, control, **kw):
        if state.global_step == self.at: raise KeyboardInterrupt('simulated crash')


def losses(out) -> dict:
    return {r['step']: r['loss'] for r in map(json.loads, (Path(out)/'metrics.jsonl').read_text().splitlines()) if 'loss' in r}


def test_resume_is_exact(tmp_path):
    "A run interrupted after step 3 and resumed has the same losses at the same steps as one that was not."
    train(small(tmp_path/'full', save_steps=3), eval_before=False)
    with pytest.raises(KeyboardInterrupt):
        train(small(tmp_path/'cut', save_steps=3), callbacks=[Interrupt(3)], eval_before=False)
    assert (tmp_path/'cut'/'checkpoint-3'/'qlora_nb_complete.json').exists()
    resumed = train(small(tmp_path/'cut', save_steps=3, resume_from_checkpoint=True), eval_before=False)
    a, b = losses(tmp_path/'full'), losses(tmp_path/'cut')
    assert sorted(a) == list(range(1, 7)) and sorted(b) == list(range(1, 7))
    for s in range(1, 7): assert a[s] == pytest.approx(b[s], rel=1e-6, abs=1e-7), (s, a[s], b[s])
    assert resumed.steps == 6


class Poison(TrainerCallback):
    "Put a NaN into one adapter weight before step `at`, as an overflow would."
    def __init__(self, at): self.at = at
    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.at:
            p = next(p for n, p in model.named_parameters() if 'lora_A' in n)
            with torch.no_grad(): p[0, 0] = float('nan')


def test_nan_guard_stops_and_names_rows(tmp_path):
    with pytest.raises(GuardStop) as e:
        train(small(tmp_path, max_steps=8), callbacks=[Poison(2)], eval_before=False)
    msg = str(e.value)
    assert 'step 3' in msg and 'is nan' in msg and 'demo_chat.jsonl:' in msg and 'learning_rate' in msg
    assert not (tmp_path/'adapter_model.safetensors').exists()  # a NaN adapter is not saved as the result


def test_grad_norm_alarm_stops(tmp_path):
    with pytest.raises(GuardStop, match='diverging'):
        train(small(tmp_path, grad_norm_alarm=1e-6, alarm_steps=2), eval_before=False)


def test_flat_loss_warns(tmp_path):
    "Identical rows and a learning rate too small to matter: the loss cannot fall."
    row = {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]}
    (tmp_path/'same.jsonl').write_text('\n'.join(json.dumps(row) for _ in range(8)))
    c = small(tmp_path/'out', max_steps=22, learning_rate=1e-12, gradient_accumulation_steps=1, micro_batch_size=2)
    c.data.datasets[0].path = str(tmp_path/'same.jsonl')
    with pytest.warns(QloraWarning, match='has not fallen'):
        train(c, eval_before=False)


class FakeOOM(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 1: raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')


def test_oom_is_explained(tmp_path):
    c = small(tmp_path, memory_budget_gib=0.001)
    with pytest.raises(QloraError, match='out of GPU memory') as e:
        train(c, callbacks=[FakeOOM()], eval_before=False)
    assert 'auto_fit' in str(e.value)


def test_stop_saves_a_checkpoint_and_returns(tmp_path):
    run = train(small(tmp_path, max_steps=50, gradient_accumulation_steps=1), background=True, eval_before=False)
    import time
    m = tmp_path/'metrics.jsonl'
    while not run.done and not (m.exists() and m.read_text().count('"loss"') >= 2): time.sleep(0.5)
    run.stop()
    r = run.wait(300)
    assert r.stopped and r.steps < 50
    assert (tmp_path/f'checkpoint-{r.steps}'/'qlora_nb_complete.json').exists()
    assert (tmp_path/'adapter_model.safetensors').exists()
