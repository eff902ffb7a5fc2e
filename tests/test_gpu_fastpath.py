"""The fast path trains the same thing as the plain path (issue 8's correctness guard), on a CUDA GPU.

A Llama-shaped random model in NF4 + double quantization with bf16 compute: the same LoRA weights, the same batch,
once through peft + bitsandbytes as they are, once with the fused 4-bit LoRA layers and Liger's kernels. The loss
and every LoRA gradient must agree within bf16 tolerance. Run on the device: `pytest -m gpu tests/test_gpu_fastpath.py`.
"""
import pytest, torch

from gpu_model import llama_lora_model, loss_and_grads

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('ckpt', [False, True])
def test_fast_path_matches_plain(tmp_path, monkeypatch, ckpt):
    "Fused layers, the one-node MLP and q/k/v and Liger = peft + bitsandbytes; with checkpointing, down_proj is skipped when recomputed."
    import qlora_nb.kernels as K
    from qlora_nb.kernels import fuse_lora
    from qlora_nb.lora import enable_checkpointing
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    model = llama_lora_model(tmp_path, alpha=32)
    model.train() if ckpt else model.eval()
    if ckpt: enable_checkpointing(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 4096, (2, 512), generator=g).cuda()
    batch = {'input_ids': ids, 'labels': ids}
    plain_loss, plain = loss_and_grads(model, batch)
    _apply_liger_kernel_to_instance(model=model.get_base_model())  # first, as the trainer does: fuse_lora replaces Liger's MLP forward
    assert 'Liger' in repr(model.get_base_model().model.norm)  # Liger swaps the instance's forward, not its class
    counts = fuse_lora(model)
    assert counts == {'fused': 28, 'qkv': 4, 'mlp': 4}, counts
    calls = []
    for name in ('lora_nf4', 'lora_mlp', 'lora_qkv', '_silu_mul'):  # counted before the call: a recomputation may stop inside one
        monkeypatch.setattr(K, name, lambda *a, f=getattr(K, name), name=name: calls.append(name) or f(*a))
    fast_loss, fast = loss_and_grads(model, batch)
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
    model = llama_lora_model(tmp_path, alpha=32)
    model.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    lens = [300, 41, 1200, 77, 512]
    ids = torch.randint(10, 4096, (1, sum(lens)), generator=g).cuda()
    pos = torch.cat([torch.arange(n) for n in lens])[None].cuda()
    batch = {'input_ids': ids, 'labels': ids, 'position_ids': pos}
    ref_loss, ref = loss_and_grads(model, batch)
    assert use_varlen_attention(model)
    kernel, calls = _varlen_call(), []
    assert kernel is not None, 'torch.nn.attention.varlen is missing: only the per-sample sdpa loop would run'
    _VARLEN[:] = [lambda *a: calls.append(1) or kernel(*a)]
    loss, grads = loss_and_grads(model, batch)
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
