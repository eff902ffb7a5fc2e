"`qlora-nb estimate` on configs whose base_model is a hub id, with no network (conftest sets HF_HUB_OFFLINE)."
import json
import yaml
from conftest import qlora_nb_cli

REF_1B = dict(model_type='llama', hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
              num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)


def _config(tmp_path, base_model):
    p = tmp_path/'run.yaml'
    p.write_text(yaml.safe_dump({'model': {'base_model': base_model}, 'data': {'datasets': [{'path': 'builtin:demo-chat'}]},
                                 'training': {'memory_budget_gib': 24}}))
    return p


def _estimate(tmp_path, base_model):
    r = qlora_nb_cli('estimate', _config(tmp_path, base_model), '--json')
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_known_hub_id_uses_its_reference_shape_and_says_so(tmp_path):
    e = _estimate(tmp_path, 'NousResearch/Llama-3.2-1B')
    assert e['fits'] is True and 2 < e['total_gib'] < 4
    assert any("'NousResearch/Llama-3.2-1B'" in n and "'llama-3.2-1b'" in n for n in e['notes']), e['notes']


def test_cached_hub_config_wins_over_the_reference(tmp_path, monkeypatch):
    snap = tmp_path/'hub'/'models--NousResearch--Llama-3.2-1B'/'snapshots'/('0' * 40)
    snap.mkdir(parents=True)
    (snap/'config.json').write_text(json.dumps({**REF_1B, 'num_hidden_layers': 2}))
    (tmp_path/'hub'/'models--NousResearch--Llama-3.2-1B'/'refs').mkdir()
    (tmp_path/'hub'/'models--NousResearch--Llama-3.2-1B'/'refs'/'main').write_text('0' * 40)
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path/'hub'))
    e = _estimate(tmp_path, 'NousResearch/Llama-3.2-1B')
    assert not any('reference shape' in n for n in e['notes']), e['notes']
    assert e['components']['base weights (quantized)'] < 0.1  # 2 decoder layers, not 16


def test_unknown_hub_id_says_how_to_estimate_anyway(tmp_path):
    r = qlora_nb_cli('estimate', _config(tmp_path, 'example-org/qwen2.5-7b-medical'))
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.startswith('qlora-nb: error: model.base_model:'), r.stderr
    for part in ('hf download example-org/qwen2.5-7b-medical config.json', 'a folder that holds it',
                 '--set model.base_model=qwen2.5-7b', 'llama-3.1-8b'):
        assert part in r.stderr, part
