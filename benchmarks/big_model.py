"""A 70B model on one 24 GiB GPU (issue 19): the Llama-3.1-70B shape with random weights quantized straight to NF4
layer by layer (no bf16 checkpoint is ever written), QLoRA-trained with the decoder layers streamed from pinned host
memory (`qlora_nb.offload.stream_layers`), against the same workload with the layers resident on the GPU.

    python benchmarks/big_model.py [--quick] [--shapes llama-3.1-70b:1:4096,llama-3.1-8b:1:4096] [--steps 3] [--plain]

Each run: peak GPU memory (torch's max allocated) and tokens/s streamed, tokens/s resident, and a profile of one
layer: its bytes, the host-to-device copy rate, the compute per layer per step, and which bound applies; `timeline`
is two streamed steps under torch.profiler (GPU time of the compute kernels and of the copies each way, in all and
per layer and step, and how much of the copying overlapped compute). `estimate` is what `qlora_nb.estimate` predicts for the same run.
The fused 4-bit LoRA path is on, as `train` has it on CUDA (`--plain`: peft + bitsandbytes as they are).
Writes benchmarks/results/big_model.json (or --out); runs already in that file with another shape, micro batch or
length stay, so each shape can run in its own process. The GPU image has no fastcore (qlora_nb needs it): carry its
wheel (`.gpu/wheels`).
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


def adapted(model, fused:bool=True):
    "LoRA r=16 on every linear layer as qlora_nb attaches it, Liger when installed, then the fused path (both runs alike)."
    import importlib.util
    from qlora_nb.config import Config
    from qlora_nb.lora import attach_lora
    c = Config(); c.lora.dropout = 0.0
    model = attach_lora(model, c)
    liger = importlib.util.find_spec('liger_kernel') is not None
    if liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model.get_base_model())
    if fused:  # after Liger, as train does: Liger's SwiGLU patch would replace the fused MLP
        from qlora_nb.kernels import fuse_lora
        fuse_lora(model)
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


def _union(iv:list) -> list:
    "Merge overlapping (start, end) intervals."
    out = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]: out[-1][1] = max(out[-1][1], b)
        else: out.append([a, b])
    return out

def _overlap(xs:list, ys:list) -> float:
    "Total length of the intersection of two merged interval lists."
    i = j = 0; tot = 0.
    while i < len(xs) and j < len(ys):
        tot += max(0., min(xs[i][1], ys[j][1]) - max(xs[i][0], ys[j][0]))
        if xs[i][1] < ys[j][1]: i += 1
        else: j += 1
    return tot

def timeline(model, opt, mbs:int, seq:int, vocab:int, layers:int, trace:str) -> dict:
    "Two steps under torch.profiler: ms of GPU time in compute kernels, in copies each way, how much copying hid behind compute."
    import tempfile
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof: tps = steps(model, opt, mbs, seq, 2, vocab)
    path = trace or tempfile.mktemp(suffix='.json')
    prof.export_chrome_trace(path)
    ev = [e for e in json.loads(Path(path).read_text())['traceEvents'] if e.get('ph') == 'X' and 'dur' in e]
    kern = _union([(e['ts'], e['ts'] + e['dur']) for e in ev if e.get('cat') == 'kernel'])
    copies = [e for e in ev if e.get('cat') == 'gpu_memcpy']
    h2d = _union([(e['ts'], e['ts'] + e['dur']) for e in copies if 'HtoD' in e['name']])
    d2h = _union([(e['ts'], e['ts'] + e['dur']) for e in copies if 'DtoH' in e['name']])
    ms = lambda iv: sum(b - a for a, b in iv) / 1e3
    span = (max(b for _, b in kern) - min(a for a, _ in kern)) / 1e3  # the two profiled steps, first kernel to last
    per = lambda v: round(v / 2 / layers, 2)  # per step and layer
    return dict(steps_ms=round(span, 1), compute_ms=round(ms(kern), 1), h2d_ms=round(ms(h2d), 1), d2h_ms=round(ms(d2h), 1),
                copy_hidden=round((_overlap(kern, h2d) + _overlap(kern, d2h)) / 1e3 / max(ms(h2d) + ms(d2h), 1e-9), 3),
                gpu_idle=round(1 - ms(kern) / span, 3),
                per_layer_step_ms=dict(compute=per(ms(kern)), h2d=per(ms(h2d)), d2h=per(ms(d2h))),
                tokens_per_s_profiled=round(tps, 1))


def estimated(shape:str, mbs:int, seq:int, offload:str, gbps:float|None=None, tflops:float|None=None) -> dict:
    "What qlora_nb's estimator says of the same run (torch AdamW, bf16, LoRA r=16 on every linear layer)."
    from qlora_nb.config import Config
    from qlora_nb.estimate import estimate, model_shape, offload_speed
    c = Config(); c.model.base_model = shape; c.training.micro_batch_size, c.data.sequence_len = mbs, seq
    c.training.optimizer, c.training.offload, c.lora.dropout = 'adamw_torch', offload, 0.0
    s = model_shape(shape)
    e = estimate(c, 141., s)
    out = dict(allocator_peak_gib=round(e.allocator_peak_gib, 2), components={k: round(v, 2) for k, v in e.components.items()})
    if offload == 'layers':
        o = offload_speed(c, s)
        out['offload_speed_default'] = dict(compute_ms=round(o.compute_ms, 2), transfer_ms=round(o.transfer_ms, 2), bound=o.bound,
                                            ratio=round(o.tokens_per_s / o.resident_tokens_per_s, 3))
        if gbps and tflops:
            o = offload_speed(c, s, gbps, tflops)
            out['offload_speed_measured_rates'] = dict(pcie_gbps=gbps, tflops=tflops, compute_ms=round(o.compute_ms, 2),
                                                       transfer_ms=round(o.transfer_ms, 2), bound=o.bound,
                                                       ratio=round(o.tokens_per_s / o.resident_tokens_per_s, 3))
    return out


def run(shape:str, mbs:int, seq:int, n:int, fused:bool=True, trace:str='', ahead:int=1) -> dict:
    import torch
    from qlora_nb.offload import stream_layers
    t = time.perf_counter()
    model = quantized_model(shape)
    built = time.perf_counter() - t
    model, liger = adapted(model, fused); model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab, L = model.config.vocab_size, model.config.num_hidden_layers
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    resident = steps(model, opt, mbs, seq, n, vocab)
    resident_peak = torch.cuda.max_memory_allocated() / 2**30
    t = time.perf_counter()
    stream = stream_layers(model, ahead=ahead)
    installed = time.perf_counter() - t
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    streamed = steps(model, opt, mbs, seq, n, vocab)
    peak = torch.cuda.max_memory_allocated() / 2**30
    tl = timeline(model, opt, mbs, seq, vocab, L, trace)
    gbps, layer_gb = copy_rate(stream), stream.packed[0].nbytes / 1e9
    input_gb = mbs * seq * model.config.hidden_size * 2 / 1e9
    compute_ms = 1e3 * mbs * seq / resident / L          # forward + recomputation + backward of one layer, resident
    transfer_ms = 1e3 * (2 * layer_gb + 2 * input_gb) / gbps  # weights in twice (forward, backward), input out and back
    out = dict(shape=shape, offload='layers', mbs=mbs, seq=seq, peak_gib=round(peak, 2), tokens_per_s=round(streamed, 1),
               resident_tokens_per_s=round(resident, 1), ratio=round(streamed / resident, 3),
               resident_peak_gib=round(resident_peak, 2),
               liger=liger, gpu=torch.cuda.get_device_name(), build_s=round(built, 1), install_s=round(installed, 1),
               profile=dict(layers=L, layer_gb=round(layer_gb, 3), input_gb=round(input_gb, 4), h2d_gbps=round(gbps, 1),
                            compute_ms_per_layer_step=round(compute_ms, 2), transfer_ms_per_layer_step=round(transfer_ms, 2),
                            bound='PCIe' if transfer_ms > compute_ms else 'compute',
                            predicted_tokens_per_s=round(mbs * seq / (L * max(compute_ms, transfer_ms) / 1e3), 1)),
               timeline=tl, fused=fused, ahead=ahead)
    from qlora_nb.estimate import model_shape
    layer_params = sum(i * o for i, o in model_shape(shape).linears.values())
    tflops = 6 * layer_params * mbs * seq / (compute_ms / 1e3) / 1e12  # forward, recomputation, input gradient: 2 FLOPs each
    out['estimate'] = dict(streamed=estimated(shape, mbs, seq, 'layers', round(gbps, 1), round(tflops, 1)),
                           resident=estimated(shape, mbs, seq, 'none'))
    print('RESULT ' + json.dumps(out), flush=True)
    del model, opt, stream; torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--shapes', default='llama-3.1-70b:1:4096,llama-3.1-8b:1:4096', help='shape:mbs:seq, comma-separated')
    ap.add_argument('--quick', action='store_true', help='a small shape only (llama-3.2-1b:1:1024), to try the script')
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--plain', action='store_true', help='peft + bitsandbytes as they are, not the fused 4-bit LoRA path')
    ap.add_argument('--ahead', type=int, default=1, help='layers fetched in advance (`stream_layers(ahead=...)`)')
    ap.add_argument('--trace', default='', help="keep the profiled step's Chrome trace here")
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'big_model.json'))
    a = ap.parse_args()
    out = Path(a.out)
    for spec in ('llama-3.2-1b:1:1024' if a.quick else a.shapes).split(','):
        shape, mbs, seq = spec.split(':')
        r = run(shape, int(mbs), int(seq), a.steps, not a.plain, a.trace, a.ahead)
        runs = json.loads(out.read_text()) if out.exists() else []
        same = lambda x: [x[k] for k in ('shape', 'mbs', 'seq')] + [x.get('fused'), x.get('ahead', 1)] == \
            [shape, int(mbs), int(seq), r['fused'], r['ahead']]
        runs = [x for x in runs if not same(x)] + [r]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(runs, indent=1) + '\n')


if __name__ == '__main__':
    main()
