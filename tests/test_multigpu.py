"Two processes through accelerate (gloo on the CPU): the same path DDP takes on GPUs."
import json, os, subprocess, sys
from qlora_nb.config import Config, save_config
from qlora_nb.multigpu import launch


def test_two_processes_on_cpu(tmp_path):
    c = Config()
    c.output.output_dir = str(tmp_path/'out')
    t = c.training
    t.max_steps, t.micro_batch_size, t.gradient_accumulation_steps, t.warmup_ratio, t.warmup_steps = 3, 2, 1, 0.0, 1
    path = save_config(c, tmp_path/'run.yaml')
    assert launch(str(path), 2, cpu=True) == 0
    hist = [json.loads(l) for l in (tmp_path/'out'/'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in hist if 'loss' in r] == [1, 2, 3]
    assert (tmp_path/'out'/'adapter_model.safetensors').exists()


NOTEBOOK_RUN = '''
import json, sys, warnings
from qlora_nb.config import Config
from qlora_nb.train import train
c = Config()
c.output.output_dir = sys.argv[1]
t = c.training
t.num_gpus, t.max_steps, t.micro_batch_size, t.gradient_accumulation_steps, t.warmup_ratio, t.warmup_steps = 2, 3, 2, 1, 0.0, 1
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    r = train(c)
print(json.dumps({'steps': r.steps, 'losses': r.losses, 'warnings': [str(x.message) for x in w]}))
'''


def test_notebook_launcher_on_cpu(tmp_path):
    "`train(config)` with `num_gpus: 2`, as in a fresh kernel: forks 2 processes and follows rank 0's metrics.jsonl."
    env = {k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK')}
    p = subprocess.run([sys.executable, '-c', NOTEBOOK_RUN, str(tmp_path/'out')], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res['steps'] == 3 and len(res['losses']) == 3  # the parent saw rank 0's history
    assert any('no GPU is visible' in m for m in res['warnings'])
    assert (tmp_path/'out'/'adapter_model.safetensors').exists()


def test_fork_refused_when_cuda_initialized(monkeypatch):
    import pytest, torch
    from qlora_nb.config import QloraError
    from qlora_nb.multigpu import check_can_fork
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True)
    with pytest.raises(QloraError, match='CUDA was already initialized in this kernel') as e: check_can_fork(2)
    assert 'Restart the kernel' in str(e.value) and 'qlora-nb train CONFIG --num-gpus 2' in str(e.value)


def test_too_few_gpus(monkeypatch):
    import pytest, torch
    from qlora_nb.config import QloraError
    from qlora_nb.multigpu import check_can_fork
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.delitem(sys.modules, 'bitsandbytes', raising=False)
    from accelerate.state import AcceleratorState
    monkeypatch.setattr(AcceleratorState, '_shared_state', {})  # an earlier test in this process may have trained
    with pytest.raises(QloraError, match='4 processes asked for, but 1 GPU'): check_can_fork(4)


def test_fsdp2_settings_for_qlora():
    from qlora_nb.multigpu import fsdp_settings
    c = Config(); c.training.fsdp = ['full_shard', 'auto_wrap']
    s = fsdp_settings(c)
    assert s['fsdp_version'] == 2 and s['fsdp_auto_wrap_policy'] == 'TRANSFORMER_BASED_WRAP'
    assert s['fsdp_transformer_layer_cls_to_wrap'] == ['LlamaDecoderLayer'] and s['fsdp_reshard_after_forward'] is True
    c.training.fsdp_config = {'fsdp_version': 1}
    assert fsdp_settings(c)['fsdp_version'] == 1  # the user's choice stays


def test_deepspeed_messages(tmp_path, monkeypatch):
    import importlib.util, pytest
    from qlora_nb.config import QloraError
    from qlora_nb.multigpu import check_deepspeed
    c = Config(); c.training.deepspeed = str(tmp_path/'zero2.json')
    with pytest.raises(QloraError, match='zero2.json does not exist'): check_deepspeed(c)
    (tmp_path/'zero2.json').write_text('{\n  "zero_optimization": {"stage": 2,}\n}')
    with pytest.raises(QloraError, match='zero2.json, line 2'): check_deepspeed(c)
    (tmp_path/'zero2.json').write_text('{"zero_optimization": {"stage": 2}}')
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None)
    with pytest.raises(QloraError, match='pip install deepspeed'): check_deepspeed(c)


def test_effective_batch_text():
    from qlora_nb.multigpu import effective_batch
    c = Config(); c.training.micro_batch_size, c.training.gradient_accumulation_steps = 4, 4
    assert effective_batch(c, 2) == 'effective batch 32 = micro batch 4 x accumulation 4 x 2 processes'


def test_importing_train_leaves_bitsandbytes_unloaded():
    "`train(config)` with `num_gpus` forks only before bitsandbytes is imported: so `qlora_nb.train`'s import must not pull it (peft does)."
    code = 'import sys, qlora_nb, qlora_nb.train, qlora_nb.multigpu; print(sorted(m for m in ("bitsandbytes", "peft", "trl") if m in sys.modules))'
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == '[]', p.stdout


def test_importing_the_library_loads_no_heavy_package():
    "Every module outside the panels imports without torch, transformers, bitsandbytes or fastcore."
    mods = ['config', 'axolotl', 'templates', 'data', 'preference', 'model', 'lora', 'estimate', 'kernels', 'offload', 'graphs',
            'live', 'guards', 'checkpoints', 'train', 'preference_train', 'multigpu', 'chat', 'merge', 'export', 'demo',
            'cli']
    heavy = ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes', 'datasets', 'fastcore', 'ipywidgets', 'matplotlib')
    code = (f'import importlib, sys\nfor m in {mods!r}: importlib.import_module("qlora_nb." + m)\n'
            f'print(sorted(m for m in {heavy!r} if m in sys.modules))')
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == '[]', p.stdout
