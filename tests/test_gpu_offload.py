"""Streaming the 4-bit layers from pinned host memory trains the same thing as keeping them on the GPU (issue 19).

A Llama-shaped random model in NF4 + double quantization, bf16 compute, LoRA on every linear layer: the same batch,
once with the layers resident, once streamed on the side stream (inputs offloaded too). The loss and every LoRA
gradient must agree, and the streamed weights must really leave the GPU. Run on the device: `pytest -m gpu tests/test_gpu_offload.py`.
"""
import pytest, torch

from gpu_model import llama_lora_model, loss_and_grads

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]


def _compare(model, fused=False):
    from qlora_nb.offload import stream_layers
    from qlora_nb.lora import decoder_layers
    ids = torch.randint(10, 4096, (2, 512), generator=torch.Generator().manual_seed(0)).cuda()
    batch = {'input_ids': ids, 'labels': ids}
    model.train()  # transformers checkpoints only in training mode: the stashed inputs are exercised too
    ref_loss, ref = loss_and_grads(model, batch)
    stream = stream_layers(model)
    w = decoder_layers(model)[0].self_attn.q_proj.base_layer.weight
    assert w.untyped_storage().nbytes() == 0 and w.quant_state.absmax.untyped_storage().nbytes() == 0
    for _ in range(2):  # the second step reuses freed blocks: the stream order must still hold
        loss, grads = loss_and_grads(model, batch)
        print(f'{"fused" if fused else "plain"}: loss resident {ref_loss:.6f} streamed {loss:.6f}')
        assert abs(loss - ref_loss) / ref_loss < 1e-3
        worst = max(((grads[n] - g).norm() / g.norm()).item() for n, g in ref.items())
        print(f'worst relative LoRA-gradient difference over {len(ref)} tensors: {worst:.3g}; at most {stream.most} layers on the GPU')
        assert worst < 1e-2
    assert stream.resident == [] and stream.most <= stream.ahead + 1
    assert w.untyped_storage().nbytes() == 0


def test_streaming_matches_resident(tmp_path):
    _compare(llama_lora_model(tmp_path, num_hidden_layers=6))


def test_streaming_with_fused_path(tmp_path):
    "The fused 4-bit LoRA layers save the `Params4bit` itself: streaming refills its storage, so they work unchanged."
    from qlora_nb.kernels import fuse_lora
    model = llama_lora_model(tmp_path, num_hidden_layers=6)
    fuse_lora(model)
    _compare(model, fused=True)



def _held_after_forward(model, batch):
    "GPU memory held between the forward and the backward (the copies to host memory done), then the step's loss and gradients."
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = model(**batch).loss
    torch.cuda.synchronize(); torch.empty(1, device='cuda')  # a malloc frees the blocks whose side-stream copies are done
    held = torch.cuda.memory_allocated() - base
    loss.backward(); torch.cuda.synchronize()
    return loss.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}, held


@pytest.mark.parametrize('fused', [False, True])
def test_parked_inputs_match_and_leave_the_gpu(tmp_path, fused):
    "`offload: activations`: the checkpointed inputs wait in pinned host memory; the same loss and gradients, less held."
    from qlora_nb.offload import park_inputs
    from qlora_nb.kernels import fuse_lora
    L = 8
    model = llama_lora_model(tmp_path, num_hidden_layers=L)
    if fused: fuse_lora(model)
    model.train()  # transformers checkpoints only in training mode
    ids = torch.randint(10, 4096, (8, 1024), generator=torch.Generator().manual_seed(0)).cuda()
    batch = {'input_ids': ids, 'labels': ids}
    loss_and_grads(model, batch)  # warm up kernels and the allocator
    ref_loss, ref, ref_held = _held_after_forward(model, batch)
    hooks = park_inputs(model)
    per_input = ids.numel() * 1024 * 2
    for step in range(2):  # the second step reuses freed blocks and pinned buffers: the stream order must still hold
        loss, grads, held = _held_after_forward(model, batch)
        worst = max(((grads[n] - g).norm() / g.norm()).item() for n, g in ref.items())
        print(f'{"fused" if fused else "plain"} step {step}: loss {ref_loss:.6f} vs parked {loss:.6f}; worst LoRA-gradient difference '
              f'{worst:.3g}; held after the forward {ref_held / 2**20:.0f} -> {held / 2**20:.0f} MiB '
              f'({(ref_held - held) / per_input:.2f} layer inputs of {per_input / 2**20:.0f} MiB); {hooks.parked} parked')
        assert abs(loss - ref_loss) / ref_loss < 1e-3 and worst < 1e-2
        assert ref_held - held >= (L - 1) * per_input * 0.95  # all but layer 0's (the embeddings' leaf)
    assert hooks.parked == 2 * (L - 1)
