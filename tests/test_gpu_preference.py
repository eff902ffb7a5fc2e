"""DPO on the GPU fast path trains what the plain path trains (issue 18), on a CUDA GPU.

A Llama-shaped random model in NF4 + double quantization with bf16 compute and LoRA adapters that count (B is not
zero): the same batch of preference pairs through trl's DPO loss, once with the fused 4-bit LoRA layers and once
through peft + bitsandbytes as they are. The reference pass (adapter off) is the same base either way. Then a few
DPO steps with `train(config)` on the fast path move the reward margin up. Run on the device:
`pytest -m gpu tests/test_gpu_preference.py`.
"""
import time
import pytest, torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]

PAIRS = [{'prompt': f'Question {i}: what colour is the sky?', 'chosen': 'Blue.', 'rejected': f'Green {i}, with purple spots.'} for i in range(16)]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    import transformers
    from qlora_nb.config import load_config
    from qlora_nb.utils import write_jsonl
    from qlora_nb.tiny import build_tiny
    tmp = tmp_path_factory.mktemp('dpo')
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=1024, intermediate_size=3584, num_hidden_layers=4,
                                   num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp/'model')
    transformers.AutoTokenizer.from_pretrained(build_tiny('tiny-llama')).save_pretrained(tmp/'model')
    f = write_jsonl(tmp/'pairs.jsonl', PAIRS)
    def config(fused, **training):
        return load_config({'model': {'base_model': str(tmp/'model')}, 'lora': {'dropout': 0.0, 'fused': fused},
                            'data': {'datasets': [{'path': f}], 'sequence_len': 256},
                            'training': {'method': 'dpo', 'micro_batch_size': 4, 'gradient_accumulation_steps': 1, 'warmup_ratio': 0.0,
                                         'learning_rate': 1e-3, 'lr_scheduler': 'constant', **training},
                            'output': {'output_dir': str(tmp/f'out-{fused}')}})
    return config


def _dpo_loss(config):
    from qlora_nb.model import load_model
    from qlora_nb.lora import attach_lora
    from qlora_nb.preference import prepare_preference_data
    from qlora_nb.train import build_trainer
    model, tok = load_model(config)
    data = prepare_preference_data(config, tok)
    torch.manual_seed(0)  # the same LoRA A matrices in both runs
    model = attach_lora(model, config)
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.02)  # B starts at zero: make the adapters count
    trainer = build_trainer(config, model, tok, data)
    fused = sum(getattr(m.forward, '__func__', None).__name__ == '_fused_forward' for m in model.modules() if 'forward' in vars(m))
    batch = {k: v.cuda() for k, v in trainer.data_collator([data.train[i] for i in range(4)]).items()}
    model.train()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics['train'].items()}
    return loss.detach().float(), grads, fused, metrics


def test_dpo_fused_equals_plain(setup):
    lf, gf, nf, mf = _dpo_loss(setup(True))
    lp, gp, np_, mp = _dpo_loss(setup(False))
    print(f'DPO loss fused {lf.item():.5f} plain {lp.item():.5f}; fused layers {nf} vs {np_}; margins {mf["rewards/margins"]:.5f} {mp["rewards/margins"]:.5f}')
    assert nf > 0 and np_ == 0  # the fast path really ran, and only there
    torch.testing.assert_close(lf, lp, rtol=2e-2, atol=2e-2)
    rel = max(((gf[n] - gp[n]).norm() / gp[n].norm().clamp_min(1e-8)).item() for n in gp)
    print(f'largest relative LoRA gradient difference {rel:.4f}')
    assert rel < 0.05


def test_dpo_trains_on_the_fast_path(setup):
    from qlora_nb.train import train
    t = time.time()
    r = train(setup(True, max_steps=8))
    margins = [h['rewards/margins'] for h in r.history if 'rewards/margins' in h]
    acc = [h['rewards/accuracies'] for h in r.history if 'rewards/accuracies' in h]
    print(f'8 DPO steps in {time.time() - t:.1f}s: margins {[round(m, 3) for m in margins]}, accuracies {acc}, '
          f'peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')
    assert margins[-1] > margins[0] and margins[-1] > 0
