"""The fast path trains the same thing as the plain path (issue 8's correctness guard), on a CUDA GPU.

A Llama-shaped random model in NF4 + double quantization with bf16 compute: the same LoRA weights, the same batch,
once through peft + bitsandbytes as they are, once with the fused 4-bit LoRA layers and Liger's kernels. The loss
and every LoRA gradient must agree within bf16 tolerance. Run on the device: `pytest -m gpu tests/test_gpu_fastpath.py`.
"""
import pytest, torch

pytestmark = pytest.mark.gpu


def _model(tmp_path):
    import transformers
    from qlora_nb.config import Config
    from qlora_nb.model import load_model
    from qlora_nb.lora import attach_lora
    from qlora_nb.tiny import build_tiny
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=1024, intermediate_size=3584, num_hidden_layers=4,
                                   num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)
    transformers.AutoTokenizer.from_pretrained(build_tiny('tiny-llama')).save_pretrained(tmp_path)
    c = Config(); c.model.base_model = str(tmp_path); c.lora.dropout = 0.0; c.lora.alpha = 32
    model, _ = load_model(c)
    model = attach_lora(model, c)
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.02)  # B starts at zero: make the adapters count
    return model


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('ckpt', [False, True])
def test_fast_path_matches_plain(tmp_path, monkeypatch, ckpt):
    "Fused layers, the one-node MLP and q/k/v and Liger = peft + bitsandbytes; with checkpointing, down_proj is skipped when recomputed."
    import qlora_nb.kernels as K
    from qlora_nb.kernels import fuse_lora
    from qlora_nb.lora import enable_checkpointing
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    model = _model(tmp_path)
    model.train() if ckpt else model.eval()
    if ckpt: enable_checkpointing(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 4096, (2, 512), generator=g).cuda()
    batch = {'input_ids': ids, 'labels': ids}
    plain_loss, plain = _loss_and_grads(model, batch)
    _apply_liger_kernel_to_instance(model=model.get_base_model())  # first, as the trainer does: fuse_lora replaces Liger's MLP forward
    assert 'Liger' in repr(model.get_base_model().model.norm)  # Liger swaps the instance's forward, not its class
    counts = fuse_lora(model)
    assert counts == {'fused': 28, 'qkv': 4, 'mlp': 4}, counts
    calls = []
    for name in ('lora_nf4', 'lora_mlp', 'lora_qkv', '_silu_mul'):  # counted before the call: a recomputation may stop inside one
        monkeypatch.setattr(K, name, lambda *a, f=getattr(K, name), name=name: calls.append(name) or f(*a))
    fast_loss, fast = _loss_and_grads(model, batch)
    runs = 2 if ckpt else 1  # checkpointed layers run again in the backward pass
    for name in ('lora_nf4', 'lora_mlp', 'lora_qkv'):
        assert calls.count(name) == 4 * runs, f'{calls.count(name)} calls of {name}: every one of the 4 layers must take the fused path'
    # h = silu(e) g once in each layer's forward and once in its backward: never in the recomputation, where down_proj is skipped
    assert calls.count('_silu_mul') == 8, calls.count('_silu_mul')
    print(f'ckpt={ckpt}: loss plain {plain_loss:.5f} fast {fast_loss:.5f}')
    assert abs(fast_loss - plain_loss) / plain_loss < 5e-3
    worst = 0.0
    for n, gp in plain.items():
        rel = ((fast[n] - gp).norm() / gp.norm()).item()
        worst = max(worst, rel)
        assert rel < 3e-2, f'{n}: relative gradient difference {rel:.3g}'
    print(f'worst relative LoRA-gradient difference over {len(plain)} tensors: {worst:.3g}')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_varlen_attention_matches_block_mask(tmp_path):
    "Padding-free rows: `qlora_varlen` (PyTorch's varlen flash attention) = sdpa with transformers' block-diagonal mask."
    from qlora_nb.kernels import use_varlen_attention, _VARLEN, _varlen_call
    model = _model(tmp_path)
    model.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    lens = [300, 41, 1200, 77, 512]
    ids = torch.randint(10, 4096, (1, sum(lens)), generator=g).cuda()
    pos = torch.cat([torch.arange(n) for n in lens])[None].cuda()
    batch = {'input_ids': ids, 'labels': ids, 'position_ids': pos}
    ref_loss, ref = _loss_and_grads(model, batch)
    assert use_varlen_attention(model)
    kernel, calls = _varlen_call(), []
    assert kernel is not None, 'torch.nn.attention.varlen is missing: only the per-sample sdpa loop would run'
    _VARLEN[:] = [lambda *a: calls.append(1) or kernel(*a)]
    loss, grads = _loss_and_grads(model, batch)
    L = model.config.num_hidden_layers
    assert len(calls) and len(calls) % L == 0, f'{len(calls)} varlen calls: every one of the {L} layers must take the varlen kernel'
    print(f'loss block-mask {ref_loss:.5f} varlen {loss:.5f}')
    assert abs(loss - ref_loss) / ref_loss < 5e-3
    worst = max(((grads[n] - gp).norm() / gp.norm()).item() for n, gp in ref.items())
    print(f'worst relative LoRA-gradient difference: {worst:.3g}')
    assert worst < 3e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_dequantize_equals_bitsandbytes():
    "`_dequantize` (bitsandbytes' C kernels into a reused buffer) = `bitsandbytes.functional.dequantize_4bit`, bit for bit."
    import bitsandbytes.functional as F
    from qlora_nb.kernels import _dequantize
    torch.manual_seed(0)
    for shape in [(1024, 4096), (4096, 1024), (3584, 1024)]:
        for nested in (True, False):
            w = torch.randn(shape, dtype=torch.bfloat16, device='cuda')
            q, qs = F.quantize_4bit(w, quant_type='nf4', compress_statistics=nested, quant_storage=torch.uint8)
            ref = F.dequantize_4bit(q, qs)
            assert torch.equal(_dequantize(q, qs, torch.bfloat16), ref), (shape, nested)
