"The README's main job: the real SmolLM2-135M-Instruct, NF4 on the CPU, learns a persona and keeps what it knew."
import pytest
from qlora_nb.cli import run
from qlora_nb.demo import PERSONA, demo


@pytest.fixture(scope='module')
def result(tmp_path_factory):
    return demo(str(tmp_path_factory.mktemp('demo')))


def test_demo_learns_the_persona(result):
    r = result.train
    # held-out identity questions (none of them trained): their eval loss at least halves
    assert r.eval_after < 0.5 * r.eval_before, (r.eval_before, r.eval_after)
    # most of them are now answered as Quill; none was before
    assert result.taught >= 4, result.persona
    assert not any(PERSONA in before for _, before, _ in result.persona), result.persona


def test_demo_keeps_what_it_knew(result):
    # the base model knows most of the held-out facts; fine-tuning loses at most one of them
    assert result.known_before >= 4, result.knowledge
    assert result.known_after >= result.known_before - 1, result.knowledge


def test_demo_writes_its_outputs(result):
    out = result.train.config.output.output_dir
    from pathlib import Path
    report = (Path(out)/'demo_report.md').read_text()
    assert report.startswith('# qlora_nb demo') and 'Do you have a name?' in report
    assert (Path(out)/'loss.png').stat().st_size > 1000
    assert (Path(out)/'adapter_model.safetensors').exists()


def test_demo_cli_short(tmp_path):
    code, out, err = run('demo', '--out', str(tmp_path), '--steps', '2')
    assert code == 0, err
    assert 'held-out identity questions answered as Quill' in out and (tmp_path/'adapter_model.safetensors').exists()
