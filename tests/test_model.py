"Model loading's bad-input paths that need a stand-in machine: no bitsandbytes, a GPU without bfloat16, no CUDA."
import logging
import pytest, torch
import qlora_nb.model as M
from qlora_nb.config import Config, QloraError


def test_bitsandbytes_missing(monkeypatch):
    monkeypatch.setattr(M, 'has_bitsandbytes', lambda: False)
    with pytest.raises(QloraError, match='bitsandbytes is not installed.*load_in_4bit: false'):
        M.bnb_config(Config())
    c = Config(); c.quantization.load_in_4bit = False
    assert M.bnb_config(c) is None  # plain LoRA needs no bitsandbytes


def test_bf16_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a, **k: 'Tesla T4')
    c = Config(); c.quantization.compute_dtype = 'bfloat16'
    with pytest.raises(QloraError, match='bfloat16 is not supported by Tesla T4.*float16'):
        M.compute_dtype(c)
    c.quantization.compute_dtype = 'auto'
    assert M.compute_dtype(c) == torch.float16


def test_cpu_path_is_said_once(caplog):
    M._said.clear()
    with caplog.at_level(logging.INFO, logger='qlora_nb'):
        M.load_base(Config()); M.load_base(Config())
    if not torch.cuda.is_available():
        assert sum('no CUDA GPU' in r.message for r in caplog.records) == 1
