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
