"The `qlora-nb config` commands, run as a user runs them: real files, real exit codes, one line per problem."
import json
import pytest, yaml
from conftest import FIXTURES, qlora_nb_cli

BAD = sorted((FIXTURES/'configs'/'bad').glob('*.yaml'))


def test_ten_or_more_bad_files():
    assert len(BAD) >= 10


def test_good_config_passes():
    r = qlora_nb_cli('config', 'check', FIXTURES/'configs'/'good.yaml')
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert eff['lora']['r'] == 8 and eff['training']['learning_rate'] == 2e-4
    assert eff['quantization']['double_quant'] is True  # defaults filled in


@pytest.mark.parametrize('path', BAD, ids=lambda p: p.stem)
def test_bad_config_is_rejected_with_a_precise_line(path):
    expect = path.read_text().splitlines()[0].removeprefix('# expect: ')
    r = qlora_nb_cli('config', 'check', path)
    assert r.returncode == 2, f'exit {r.returncode}: {r.stdout} {r.stderr}'
    assert r.stdout == ''
    assert 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert all(l.startswith('qlora-nb: error: ') for l in lines), r.stderr
    assert expect in r.stderr, f'expected {expect!r} in:\n{r.stderr}'
    assert 'Fix:' in r.stderr or 'is missing' in r.stderr


def test_json_output():
    r = qlora_nb_cli('config', 'check', FIXTURES/'configs'/'good.yaml', '--json', '--set', 'lora.r=4')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['lora']['r'] == 4


def test_bad_set_override_names_the_key():
    r = qlora_nb_cli('config', 'check', FIXTURES/'configs'/'good.yaml', '--set', 'training.seeed=3')
    assert r.returncode == 2
    assert '--set training.seeed=3: unknown setting. Fix: did you mean `seed`?' in r.stderr


def test_init_writes_a_documented_config_that_loads(tmp_path):
    out = tmp_path/'run.yaml'
    assert qlora_nb_cli('config', 'init', out).returncode == 0
    text = out.read_text()
    assert '# rank of each adapter' in text
    assert qlora_nb_cli('config', 'check', out).returncode == 0
    r = qlora_nb_cli('config', 'init', out)
    assert r.returncode == 1 and 'already exists' in r.stderr


@pytest.mark.parametrize('name,warns', [('llama3-8b-qlora-sharegpt.yml', True), ('llama31-8b-qlora-alpaca-zero3.yml', False)])
def test_axolotl_conversion_round_trip(tmp_path, name, warns):
    "Axolotl -> ours (via the CLI) -> Axolotl loses no supported key."
    from qlora_nb.axolotl import lost_keys
    from qlora_nb.config import load_config
    src = FIXTURES/'axolotl'/name
    out = tmp_path/'ours.yaml'
    r = qlora_nb_cli('config', 'from-axolotl', src, out)
    assert r.returncode == 0, r.stderr
    assert ('warning:' in r.stderr) == warns  # unsupported keys are listed, never dropped silently
    ours = load_config(out)
    assert lost_keys(yaml.safe_load(src.read_text()), ours) == []
    for ds in ours.data.datasets:  # config check looks for local data files: give it the one the example names
        if ds.path.endswith('.jsonl'): (tmp_path/ds.path).parent.mkdir(parents=True, exist_ok=True); (tmp_path/ds.path).touch()
    r = qlora_nb_cli('config', 'check', out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_axolotl_unsupported_keys_in_one_warning():
    # its data file is not shipped: --set points the first dataset at the demo data, so only the warning remains
    r = qlora_nb_cli('config', 'check', FIXTURES/'axolotl'/'llama3-8b-qlora-sharegpt.yml', '--set', 'data.datasets[0].path=builtin:demo-chat')
    assert r.returncode == 0, r.stderr
    warns = [l for l in r.stderr.splitlines() if 'warning:' in l]
    assert len(warns) == 1 and 'group_by_length' in warns[0]


def test_merge_without_adapter_says_so():
    r = qlora_nb_cli('merge', FIXTURES/'configs'/'good.yaml')
    assert r.returncode == 1 and 'adapter folder not found' in r.stderr and 'Traceback' not in r.stderr


def test_axolotl_current_style_keeps_axolotls_meaning(tmp_path):
    "A file in Axolotl's current style converts with Axolotl's meaning, its defaults included."
    out = tmp_path/'ours.yaml'
    r = qlora_nb_cli('config', 'from-axolotl', FIXTURES/'axolotl'/'qwen3-qlora-current.yml', out)
    assert r.returncode == 0, r.stderr
    ours = yaml.safe_load(out.read_text())
    t, m = ours['training'], ours['model']
    assert (m['attn_implementation'], t['optimizer'], t['max_grad_norm']) == ('flash_attention_2', 'adamw_torch_4bit', 1.0)
    assert (t['evals_per_epoch'], t['fsdp'], t['fsdp_config']['version']) == (None, ['full_shard', 'auto_wrap'], 2)
    assert (ours['lora']['fused'], ours['lora']['dropout'], t['micro_batch_size']) == ('auto', 0.0, 1)
    assert 'eot_tokens' in r.stderr  # named, never dropped


@pytest.mark.parametrize('name,expect', [
    ('several-problems.yml', 'rl: `rl: grpo` is not supported by qlora_nb'),
    ('vision-lora.yml', 'processor_type: multimodal training (`processor_type: AutoProcessor`): not supported'),
    ('gptq-lora.yml', 'gptq: GPTQ-quantized base models (`gptq`): not supported'),
    ('moe-target-parameters.yml', 'lora_target_parameters: LoRA on raw parameters such as MoE experts'),
    ('full-finetune.yml', 'Fix: add `adapter: qlora` (4-bit base) or `adapter: lora` (16-bit base) to train an adapter instead.'),
])
def test_axolotl_unsupported_feature_is_refused_by_name(name, expect):
    r = qlora_nb_cli('config', 'check', FIXTURES/'axolotl'/name)
    assert r.returncode == 2 and expect in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr


def test_axolotl_every_problem_in_one_pass():
    r = qlora_nb_cli('config', 'check', FIXTURES/'axolotl'/'several-problems.yml')
    assert r.returncode == 2
    keys = [l.split(': ')[3] for l in r.stderr.strip().splitlines()]
    assert keys == ['rl', 'datasets[0].type', 'lora.r', 'training.optimizer'], r.stderr


def test_set_changes_a_list_item(tmp_path):
    (tmp_path/'my').mkdir(); (tmp_path/'my'/'train.jsonl').write_text('{"messages": []}\n')
    r = qlora_nb_cli('config', 'check', FIXTURES/'configs'/'good.yaml', '--json', '--set', 'data.datasets[0].path=my/train.jsonl', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['data']['datasets'][0]['path'] == 'my/train.jsonl'


@pytest.mark.parametrize('arg, expect', [
    ('data.datasets[0].sequence_len=abc', '--set data.datasets[0].sequence_len=abc: unknown setting. Fix: `sequence_len` belongs under `data:`'),
    ('data.datasets[5].path=x', '--set data.datasets[5].path=x: data.datasets[5]: index out of range: `data.datasets` has 1 item'),
    ('training.seed=abc', '--set training.seed=abc: expected an integer'),
    ('data.datasets[0].path[0]=x', '--set data.datasets[0].path[0]=x: `data.datasets[0].path` is not a list'),
])
def test_bad_set_names_set_not_a_yaml_line(arg, expect):
    r = qlora_nb_cli('config', 'check', FIXTURES/'configs'/'good.yaml', '--set', arg)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert expect in r.stderr, r.stderr
    assert 'good.yaml' not in r.stderr, r.stderr


def test_config_check_checks_local_paths(tmp_path):
    cfg = tmp_path/'run.yaml'
    cfg.write_text('model:\n  base_model: ./no-model\ndata:\n  datasets:\n  - path: data/none.jsonl\n  - path: HuggingFaceH4/no_robots\n')
    r = qlora_nb_cli('config', 'check', cfg, cwd=tmp_path)
    assert r.returncode == 2 and 'OK' not in r.stderr, r.stderr
    assert f"model.base_model: no folder './no-model' ({tmp_path/'no-model'}). Fix: give a local folder with config.json, a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct`" in r.stderr, r.stderr
    assert f"data.datasets[0].path: no file or folder 'data/none.jsonl' ({tmp_path/'data'/'none.jsonl'})" in r.stderr, r.stderr
    cfg.write_text('model:\n  base_model: HuggingFaceTB/SmolLM2-135M-Instruct\ndata:\n  datasets:\n  - path: builtin:demo-chat\n')
    r = qlora_nb_cli('config', 'check', cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '# model.base_model: not checked: hub id, offline' in r.stderr and 'OK' in r.stderr, r.stderr
