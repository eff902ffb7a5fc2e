"""A 70B model on one 24 GiB GPU (issue 19): the Llama-3.1-70B shape with random weights quantized straight to NF4
layer by layer (no bf16 checkpoint is ever written), QLoRA-trained with the decoder layers streamed from pinned host
memory (`qlora_nb.offload.stream_layers`), against the same workload with the layers resident on the GPU.

    python benchmarks/big_model.py [--quick] [--shapes llama-3.1-70b:1:4096,llama-3.1-8b:1:4096] [--steps 3]

Each run: peak GPU memory (torch's max allocated) and tokens/s streamed, tokens/s resident, and a profile of one
layer: its bytes, the host-to-device copy rate, the compute per layer per step, and which bound applies.
Writes benchmarks/results/big_model.json (or --out). The GPU image has no fastcore (qlora_nb needs it): carry a copy of
the package beside qlora_nb in the folder you send.
"""
import argparse, json, time
from pathlib import Path


def quantized_model(shape:str):
    "The model of a reference shape, built on the meta device and materialised one layer at a time in NF4 on the GPU."
    import torch, transformers, bitsandbytes as bnb
    from qlora_nb.estimate import _transformers_config
    cfg = _transformers_config(shape)
    with torch.device('meta'): model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.config.use_cache = False
    model.is_loaded_in_4bit = True  # what transformers' bitsandbytes loader sets: peft then wraps with its 4-bit LoRA layer
    for layer in model.model.layers:
        for name, lin in [(n, m) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]:
            parent, attr = layer.get_submodule(name.rpartition('.')[0]), name.rpartition('.')[2]
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.bfloat16, quant_type='nf4',
                                  compress_statistics=True, quant_storage=torch.uint8, device='meta')
            w = torch.randn(lin.out_features, lin.in_features, device='cuda', dtype=torch.bfloat16).mul_(0.02)
            q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type='nf4', compress_statistics=True,
                                         quant_storage=torch.uint8, module=q).to('cuda')
            setattr(parent, attr, q)
        for m in [m for m in layer.modules() if hasattr(m, 'variance_epsilon')]:  # what is left: the norms
            m.to_empty(device='cuda'); torch.nn.init.ones_(m.weight)
    for m in (model.model.embed_tokens, model.lm_head, model.model.norm):
        m.to_empty(device='cuda')
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.02); torch.nn.init.normal_(model.lm_head.weight, std=0.02)
    torch.nn.init.ones_(model.model.norm.weight)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg).to('cuda')
    return model


def adapted(model):
    "LoRA r=16 on every linear layer, as qlora_nb attaches it, with Liger's kernels when installed (the same in both runs)."
    import importlib.util
    from qlora_nb.config import Config
    from qlora_nb.lora import attach_lora
    c = Config(); c.lora.dropout = 0.0
    model = attach_lora(model, c)
    liger = importlib.util.find_spec('liger_kernel') is not None
    if liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model.get_base_model())
    return model, liger


def steps(model, opt, mbs:int, seq:int, n:int, vocab:int) -> float:
    "Tokens per second over training steps 2..n (the first warms up)."
    import torch
    ids = torch.randint(10, vocab, (mbs, seq), device='cuda', generator=torch.Generator('cuda').manual_seed(0))
    times = []
    for _ in range(n):
        torch.cuda.synchronize(); t = time.perf_counter()
        with torch.autocast('cuda', dtype=torch.bfloat16): loss = model(input_ids=ids, labels=ids).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    return mbs * seq / (sum(times[1:]) / len(times[1:]))


def copy_rate(stream) -> float:
    "GB/s of one layer's host-to-device copy on the side stream (5 copies of layer 0)."
    import torch
    p = stream.packed[0]
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream.side):
        p.fetch(); a.record(stream.side)
        for _ in range(5): p.dev.copy_(p.host, non_blocking=True)
        b.record(stream.side)
    b.synchronize(); p.evict()
    return 5 * p.nbytes / (a.elapsed_time(b) / 1e3) / 1e9


def run(shape:str, mbs:int, seq:int, n:int) -> dict:
    import torch
    from qlora_nb.offload import stream_layers
    t = time.perf_counter()
    model = quantized_model(shape)
    built = time.perf_counter() - t
    model, liger = adapted(model); model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab, L = model.config.vocab_size, model.config.num_hidden_layers
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    resident = steps(model, opt, mbs, seq, n, vocab)
    resident_peak = torch.cuda.max_memory_allocated() / 2**30
    t = time.perf_counter()
    stream = stream_layers(model)
    installed = time.perf_counter() - t
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    streamed = steps(model, opt, mbs, seq, n, vocab)
    peak = torch.cuda.max_memory_allocated() / 2**30
    gbps, layer_gb = copy_rate(stream), stream.packed[0].nbytes / 1e9
    input_gb = mbs * seq * model.config.hidden_size * 2 / 1e9
    compute_ms = 1e3 * mbs * seq / resident / L          # forward + recomputation + backward of one layer, resident
    transfer_ms = 1e3 * (2 * layer_gb + 2 * input_gb) / gbps  # weights in twice (forward, backward), input out and back
    out = dict(shape=shape, offload='layers', mbs=mbs, seq=seq, peak_gib=round(peak, 2), tokens_per_s=round(streamed, 1),
               resident_tokens_per_s=round(resident, 1), ratio=round(streamed / resident, 3), resident_peak_gib=round(resident_peak, 2),
               liger=liger, gpu=torch.cuda.get_device_name(), build_s=round(built, 1), install_s=round(installed, 1),
               profile=dict(layers=L, layer_gb=round(layer_gb, 3), input_gb=round(input_gb, 4), h2d_gbps=round(gbps, 1),
                            compute_ms_per_layer_step=round(compute_ms, 2), transfer_ms_per_layer_step=round(transfer_ms, 2),
                            bound='PCIe' if transfer_ms > compute_ms else 'compute',
                            predicted_tokens_per_s=round(mbs * seq / (L * max(compute_ms, transfer_ms) / 1e3), 1)))
    print('RESULT ' + json.dumps(out), flush=True)
    del model, opt, stream; torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--shapes', default='llama-3.1-70b:1:4096,llama-3.1-8b:1:4096', help='shape:mbs:seq, comma-separated')
    ap.add_argument('--quick', action='store_true', help='a small shape only (llama-3.2-1b:1:1024), to try the script')
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'big_model.json'))
    a = ap.parse_args()
    runs = []
    for spec in ('llama-3.2-1b:1:1024' if a.quick else a.shapes).split(','):
        shape, mbs, seq = spec.split(':')
        runs.append(run(shape, int(mbs), int(seq), a.steps))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(runs, indent=1) + '\n')


if __name__ == '__main__':
    main()
