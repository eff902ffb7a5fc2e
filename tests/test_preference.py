"Preference tuning on the CPU with the real SmolLM2-135M-Instruct (4-bit, LoRA): DPO moves the reward margin the right way; ORPO and KTO train."
import json
import pytest
from qlora_nb.utils import write_jsonl
from qlora_nb.train import train

PAIRS = [{'prompt': 'Sky colour?', 'chosen': 'Blue.', 'rejected': 'Green, with purple spots.'},
         {'prompt': 'Grass colour?', 'chosen': 'Green.', 'rejected': 'Bright orange, always.'},
         {'prompt': 'Snow colour?', 'chosen': 'White.', 'rejected': 'Pitch black, like coal.'},
         {'prompt': 'Sun colour?', 'chosen': 'Yellow.', 'rejected': 'Deep blue, like the sea.'}]


def _config(tmp_path, method, steps, **training):
    f = write_jsonl(tmp_path/'pairs.jsonl', PAIRS)
    return {'model': {'base_model': 'builtin:smollm2-135m'}, 'lora': {'r': 8, 'alpha': 16, 'dropout': 0.0},
            'data': {'datasets': [{'path': f}], 'sequence_len': 64},
            'training': {'method': method, 'micro_batch_size': 2, 'gradient_accumulation_steps': 1, 'max_steps': steps,
                         'learning_rate': 2e-3, 'warmup_ratio': 0.0, 'lr_scheduler': 'constant', 'optimizer': 'adamw_torch',
                         'gradient_checkpointing': False, **training},
            'output': {'output_dir': str(tmp_path/'out')}}


def _series(history, key): return [h[key] for h in history if key in h]


def test_dpo_moves_the_reward_margin(tmp_path):
    r = train(_config(tmp_path, 'dpo', 4))
    margins = _series(r.history, 'rewards/margins')
    assert len(margins) == 4 and margins[0] == pytest.approx(0, abs=1e-4)  # the first step scores the untrained adapter: policy = reference
    assert margins[-1] > 0.05, margins
    assert _series(r.history, 'rewards/accuracies')[-1] > 0.5
    saved = [json.loads(l) for l in (tmp_path/'out'/'metrics.jsonl').read_text().splitlines()]
    assert _series(saved, 'rewards/margins') == margins  # the margins reach our metrics file
    assert (tmp_path/'out'/'adapter_config.json').exists() and not (tmp_path/'out'/'ref').exists()
    assert 'training:\n  method: dpo' in (tmp_path/'out'/'qlora_nb.yaml').read_text()


@pytest.mark.parametrize('method', ['orpo', 'kto'])
def test_orpo_and_kto_train(tmp_path, method):
    r = train(_config(tmp_path, method, 2))
    assert r.steps == 2 and len(_series(r.history, 'rewards/margins')) == 2
    assert all(l == l for l in r.losses)  # no NaN


def test_axolotl_dpo_cli_then_merge_and_export(tmp_path):
    """An Axolotl-style `rl: dpo` YAML trained by the `qlora-nb` script (one step), then `merge` and `export` as for
    SFT: the merged model's logits are the adapter model's, and the GGUF holds every merged weight. This checks the
    way through the three commands, not what DPO learns (the tests above do that on SmolLM2), so it runs the tiny
    random Llama with `adapter: lora` (Axolotl's plain LoRA; the merge into the 16-bit base is the same for a QLoRA
    adapter)."""
    import torch, transformers, peft, yaml
    from safetensors import safe_open
    from conftest import qlora_nb_cli
    from qlora_nb.builtin import resolve_model_path
    from qlora_nb.export import read_gguf
    from qlora_nb.lora import peft_notice_hidden
    p = PAIRS[0]
    rows = [{'conversation': [{'role': 'user', 'content': p['prompt']}],
             'chosen': {'role': 'assistant', 'content': p['chosen']},
             'rejected': {'role': 'assistant', 'content': p['rejected']}}]
    out = tmp_path/'out'
    cfg = tmp_path/'dpo.yml'
    cfg.write_text(yaml.safe_dump({
        'base_model': 'builtin:tiny-llama', 'adapter': 'lora', 'rl': 'dpo', 'rl_beta': 0.1,
        'lora_r': 4, 'lora_alpha': 8, 'lora_dropout': 0.0, 'lora_target_linear': True, 'sequence_len': 48,
        'datasets': [{'path': str(write_jsonl(tmp_path/'pairs.jsonl', rows)), 'type': 'chat_template.default',
                      'field_messages': 'conversation', 'field_chosen': 'chosen', 'field_rejected': 'rejected'}],
        'micro_batch_size': 1, 'gradient_accumulation_steps': 1, 'max_steps': 1, 'learning_rate': 0.01,
        'lr_scheduler': 'constant', 'warmup_ratio': 0.0, 'optimizer': 'adamw_torch', 'gradient_checkpointing': False,
        'output_dir': str(out)}))
    r = qlora_nb_cli('train', cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = [json.loads(l) for l in (out/'metrics.jsonl').read_text().splitlines()]
    assert len(_series(saved, 'rewards/margins')) == 1 and 'method: dpo' in (out/'qlora_nb.yaml').read_text()
    r = qlora_nb_cli('merge', cfg, '--set', 'output.merge_dtype=float32')
    assert r.returncode == 0, r.stderr[-3000:]
    r = qlora_nb_cli('export', cfg, '--gguf', 'f16')
    assert r.returncode == 0, r.stderr[-3000:]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    x = tok.apply_chat_template([{'role': 'user', 'content': 'Sky colour?'}], add_generation_prompt=True,
                                return_tensors='pt', return_dict=True)['input_ids']
    base = transformers.AutoModelForCausalLM.from_pretrained(resolve_model_path('builtin:tiny-llama'),
                                                             dtype=torch.float32)
    with peft_notice_hidden(): tuned = peft.PeftModel.from_pretrained(base, out).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(out/'merged', dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = tuned(x).logits[0], merged(x).logits[0]
        with tuned.disable_adapter(): before = tuned(x).logits[0]
    scale = want.abs().max()
    assert (got - want).abs().max() / scale < 1e-4
    assert (before - want).abs().max() / scale > 1e-3  # the DPO step moved the model, so the check above has teeth
    with safe_open(out/'merged'/'model.safetensors', 'pt') as f: weights = len(list(f.keys()))
    meta, tensors = read_gguf(out/'gguf'/'out-f16.gguf')
    assert meta['general.architecture'] == 'llama' and len(tensors) == weights == 9 * 4 + 3  # 4 layers, untied head
