"`.ci/layers.py` (the layer rule CI checks) finds each kind of violation planted in a fake package."
import subprocess, sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent/'.ci'/'layers.py'

def check(tmp_path, files:dict) -> tuple[int, str]:
    pkg = tmp_path/'qlora_nb'; pkg.mkdir()
    for name, src in files.items(): (pkg/f'{name}.py').write_text(src)
    r = subprocess.run([sys.executable, str(SCRIPT), str(pkg)], capture_output=True, text=True)
    return r.returncode, r.stdout

def test_a_clean_package_passes(tmp_path):
    rc, out = check(tmp_path, {'keys': 'import re\n', 'config': 'from .keys import x\n',
                               'train': 'from .config import y\ndef f():\n    import torch\n'})
    assert rc == 0 and 'OK: the layer rule holds.' in out, out

def test_each_violation_is_named(tmp_path):
    rc, out = check(tmp_path, {
        'keys': 'from .config import Config\n',                       # a cycle with config
        'config': 'from .keys import _parse\nfrom .train import train\n',  # private name; upward import
        'train': 'import torch\ndef f():\n    from qlora_nb.config import Config\n    import json\n',
        'mystery': '',
    })
    assert rc == 1, out
    for expected in ['qlora_nb/config.py:2: config (core) imports train (run), a higher layer',
                     'qlora_nb/config.py:1: config imports the private keys._parse',
                     'qlora_nb/train.py:3: train imports our module config inside a function',
                     'qlora_nb/train.py:4: train imports json inside a function',
                     'qlora_nb/train.py:1: train imports torch at the top',
                     'import cycle config', 'module mystery has no layer']:
        assert expected in out, f'{expected!r} not in:\n{out}'
