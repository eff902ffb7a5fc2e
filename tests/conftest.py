"Shared pytest fixtures: paths, and running the real `qlora-nb` console script."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT/'tests'/'fixtures'


@pytest.fixture(scope='session', autouse=True)
def _offline(tmp_path_factory):
    """No test may reach the hub. Built and converted models go to the user's cache (`$QLORA_NB_CACHE`, else
    ~/.cache/qlora_nb): the real model is converted from its GGUF once per machine, not once per session."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    os.environ.setdefault('HF_DATASETS_OFFLINE', '1')


def qlora_nb_cli(*args, cwd=None, timeout=600):
    "Run the installed `qlora-nb` script as a user would; returns the CompletedProcess (text mode)."
    exe = Path(sys.executable).with_name('qlora-nb')
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'qlora_nb.cli']
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=os.environ.copy())


LLAMACPP_SDIST = 'llama-cpp-python==0.3.36'  # pinned: its vendored llama.cpp carries real models' chat templates


def reference_dir(name):
    "A folder of reference material kept across test sessions (`$QLORA_NB_REFS`, else ~/.cache/qlora_nb/refs)."
    p = Path(os.environ.get('QLORA_NB_REFS') or Path.home()/'.cache'/'qlora_nb'/'refs')/name
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture(scope='session')
def llamacpp_sdist():
    "The llama-cpp-python source archive from PyPI (downloaded once): llama.cpp's sources, its real chat templates."
    d = reference_dir('llamacpp-sdist')
    found = sorted(d.glob('llama_cpp_python-*.tar.gz'))
    if not found:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--no-binary', ':all:',
                        LLAMACPP_SDIST, '-d', str(d)], check=True, timeout=900)
        found = sorted(d.glob('llama_cpp_python-*.tar.gz'))
    return found[-1]


@pytest.fixture(scope='session')
def real_templates(llamacpp_sdist):
    "name -> Jinja text of the real chat templates that llama.cpp tests with (models/templates/*.jinja)."
    import tarfile
    d = reference_dir('llamacpp-templates')
    if not any(d.glob('*.jinja')):
        with tarfile.open(llamacpp_sdist) as tar:
            for m in tar.getmembers():
                if '/models/templates/' in m.name and m.name.endswith('.jinja'):
                    (d/Path(m.name).name).write_bytes(tar.extractfile(m).read())
    return {p.stem: p.read_text(encoding='utf-8') for p in sorted(d.glob('*.jinja'))}
