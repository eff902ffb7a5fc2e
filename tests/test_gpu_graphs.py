"""CUDA graphs of the decoder layers train the same thing as the eager layers (issue 16).

A Llama-shaped random model in NF4 + double quantization, bf16, LoRA on every linear layer, the fused path: the same
batch, eager and then replayed from the captured graphs, two steps each (the second replay reuses every static
buffer). The loss and every LoRA gradient must agree; each layer must replay, not fall back; a batch of another shape
must run eagerly and still train. Also prints the host-side step time both ways. Run on the device:
`pytest -m gpu tests/test_gpu_graphs.py -s`.
"""
import time, pytest, torch

from gpu_model import llama_lora_model, loss_and_grads

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]


def _step_s(model, batch, n=5):
    torch.cuda.synchronize(); t = time.time()
    for _ in range(n): loss_and_grads(model, batch)
    return (time.time() - t) / n


@pytest.mark.parametrize('ckpt', [True, False])
def test_graphs_match_eager(tmp_path, ckpt):
    from qlora_nb.graphs import graph_layers
    from qlora_nb.kernels import fuse_lora
    from qlora_nb.lora import decoder_layers
    L = 4
    model = llama_lora_model(tmp_path, num_hidden_layers=L)
    if not ckpt: model.gradient_checkpointing_disable()
    fuse_lora(model)
    model.train()
    ids = torch.randint(10, 4096, (4, 512), generator=torch.Generator().manual_seed(0)).cuda()
    batch = {'input_ids': ids, 'labels': ids}
    ref_loss, ref = loss_and_grads(model, batch)
    eager_s = _step_s(model, batch)
    g = graph_layers(model)
    assert not any(l.gradient_checkpointing for l in decoder_layers(model))
    for step in range(2):
        loss, grads = loss_and_grads(model, batch)
        worst = max(((grads[n] - r).norm() / r.norm()).item() for n, r in ref.items())
        print(f'ckpt={ckpt} step {step}: loss eager {ref_loss:.6f} graphed {loss:.6f}; worst LoRA-gradient difference {worst:.3g} '
              f'over {len(ref)}; replays {g.replays}, captures {g.captures}, eager {dict(g.eager)}')
        assert abs(loss - ref_loss) / ref_loss < 1e-3 and worst < 1e-2
    assert g.captures == 1 and g.replays == 2 * L and not g.eager
    graphed_s = _step_s(model, batch)
    print(f'ckpt={ckpt}: step {eager_s * 1e3:.1f} ms eager -> {graphed_s * 1e3:.1f} ms graphed ({eager_s / graphed_s:.2f}x), '
          f'{L} layers, 4 x 512 tokens, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')
    short = {'input_ids': ids[:, :256], 'labels': ids[:, :256]}  # another shape: eager, and it still trains
    loss, grads = loss_and_grads(model, short)
    assert g.eager['shape not captured'] == L and torch.isfinite(loss) and all(v.norm() > 0 for v in grads.values())
