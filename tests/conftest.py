"Shared pytest fixtures: paths, and running the real `qlora-nb` console script."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT/'tests'/'fixtures'


@pytest.fixture(scope='session', autouse=True)
def _offline(tmp_path_factory):
    "No test may reach the hub, and built tiny models are cached per test session."
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
    os.environ.setdefault('QLORA_NB_CACHE', str(tmp_path_factory.mktemp('qlora_nb_cache')))


def qlora_nb_cli(*args, cwd=None, timeout=600):
    "Run the installed `qlora-nb` script as a user would; returns the CompletedProcess (text mode)."
    exe = Path(sys.executable).with_name('qlora-nb')
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'qlora_nb.cli']
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=os.environ.copy())
