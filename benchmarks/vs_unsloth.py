"""qlora_nb against the plain Hugging Face stack, the same with Liger, and Unsloth: side by side, in one run (issue 8).

Every stack trains the same random-weight checkpoint (made by the anchors' `anchor_hf.py --make-only`) on the same
rows (the anchors' generator: `torch.randint(10, vocab)` with seed 0; long-tailed `chat_lengths` for the chat
workload), each in its own process, and the table compares trained tokens/s, peak GiB and MFU:

- A-lean: Llama-3.1-8B shape, dense rows of 2048 tokens, micro batch 4, activation checkpointing on;
- A-24GiB: each stack's fastest candidate whose peak stays under 24 GiB;
- A-card: each stack's fastest candidate on the whole card;
- B-chat: conversations of lognormal length (median 300, clipped to 2048), 8 per optimizer step, real tokens only;
  qlora_nb joins each batch into one row (padding-free), Unsloth runs as it recommends, the plain stack pads;
- A-1B: the Llama-3.2-1B shape, dense rows, micro batch 4, checkpointing on.

NF4 + double quantization, LoRA r=16 alpha=16 dropout 0 on all linear layers, paged AdamW 8-bit, bf16, lr 2e-4
constant, on every stack. MFU counts the model's FLOPs without recomputation (4 x linear parameters + attention
per trained token: 31.6 GFLOP for the 8B shape at 2048) against 800 TFLOP/s, the H100's measured bf16 rate.

    ../shared/gpu/prep --unsloth          # here; then on the device, with carry [".gpu"]:
    source .gpu/env.sh; python benchmarks/vs_unsloth.py --out $OUT/vs_unsloth.json
    source .gpu/env.sh; python benchmarks/vs_unsloth.py --part card --stacks all --out $OUT/vs_unsloth_card.json

The default run (qlora_nb and Unsloth on lean, 24gib, 1b and chat) fits in one 10-minute device call: both
checkpoints are made in this process, without a process start per shape.

`--child` runs qlora_nb's own cells in this process (the parent calls it); the anchors' scripts run as they are.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK_TFLOPS = 800.0
SHAPES = {'8b': ('llama3-8b', '/tmp/vs_unsloth/llama3-8b'), '1b': ('llama3-1b', '/tmp/vs_unsloth/llama3-1b')}

# Each workload: the settings every stack shares, and per stack the candidates tried (the best one counts).
# A candidate: (micro batch, checkpointing, extra) where extra names qlora_nb's own variants.
FAST = {'liger': True, 'fused': True}
WORKLOADS = {
    'lean':  dict(shape='8b', chat=False, steps=10, budget=None,
                  cands={'qlora_nb': [(4, True, FAST | {'offload': 'activations'})], 'qlora_nb-plain': [(4, True, {'liger': False, 'fused': False})],
                         'qlora_nb+liger': [(4, True, {'liger': True, 'fused': False})],
                         'hf': [(4, True, {})], 'hf+liger': [(4, True, {})], 'unsloth': [(4, True, {})]}),
    'chat':  dict(shape='8b', chat=True, steps=16, budget=None,
                  cands={'qlora_nb': [(8, True, FAST | {'padding_free': True})],
                         'hf': [(8, True, {})], 'hf+liger': [(8, True, {})],
                         'unsloth': [(8, True, {})]}),
    '1b':    dict(shape='1b', chat=False, steps=12, budget=None,
                  cands={'qlora_nb': [(4, True, FAST | {'cuda_graphs': True})], 'hf+liger': [(4, True, {})], 'unsloth': [(4, True, {})]}),
    # Only the candidate that won last time is tried (H200, 2026-12-02, round 4 call 3: qlora_nb mbs 2 without checkpointing, graphed,
    # 12,783 at 20.6 GiB, mbs 4 every 2nd layer 12,118 at 20.9; H100, 2026-11-23: Unsloth mbs 2 without 12,829, mbs 8 with 10,237);
    # HF+Liger keeps both. The 1B cell is graphed too (47,414 vs 41,173 eager, same call); lean parks its inputs (the memory target).
    '24gib': dict(shape='8b', chat=False, steps=10, budget=24.0,
                  cands={'qlora_nb': [(2, False, FAST | {'cuda_graphs': True})],
                         'hf+liger': [(2, False, {}), (8, True, {})], 'unsloth': [(2, False, {})]}),
    'card':  dict(shape='8b', chat=False, steps=10, budget=78.0,
                  cands={'qlora_nb': [(4, False, FAST), (8, False, FAST)], 'hf+liger': [(4, False, {})],
                         'unsloth': [(4, False, {}), (8, False, {})]}),
}


def flops_per_token(cfg:dict, lengths:list[int]) -> float:
    "Model FLOPs per trained token without recomputation: 4 x linear params (forward + input grads) + causal attention."
    d, L, f, v = cfg['hidden_size'], cfg['num_hidden_layers'], cfg['intermediate_size'], cfg['vocab_size']
    kv = d * cfg['num_key_value_heads'] // cfg['num_attention_heads']
    linear = L * (2 * d * d + 2 * d * kv + 3 * d * f) + d * v
    ctx = sum(n * n for n in lengths) / sum(lengths)  # the average row length a token sits in
    return 4 * linear + 6 * L * d * ctx


# --- qlora_nb's cells, in a child process -------------------------------------------------------------------------
def rows(vocab:int, seq:int, n:int, chat:bool) -> list[list[int]]:
    "The anchors' rows, token for token."
    import torch
    sys.path.insert(0, str(anchors_dir()))
    from anchor_hf import chat_lengths
    g = torch.Generator().manual_seed(0)
    lens = chat_lengths(n, seq) if chat else [seq] * n
    return [torch.randint(10, vocab, (k,), generator=g).tolist() for k in lens]


def our_cell(path:str, seq:int, mbs:int, ckpt:bool, steps:int, chat:bool, extra:dict) -> dict:
    import gc, datasets, torch
    from transformers import TrainerCallback
    from qlora_nb.config import Config
    from qlora_nb.data import PreparedData
    from qlora_nb.model import load_model
    from qlora_nb.lora import attach_lora
    from qlora_nb.train import build_trainer
    gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    c = Config(); c.model.base_model = path; c.data.datasets[0].type = 'tokenized'
    c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.fused = 16, 16, 0.0, extra.get('fused', True)
    t = c.training
    t.micro_batch_size, t.gradient_accumulation_steps, t.max_steps, t.learning_rate = mbs, 1, steps, 2e-4
    t.lr_scheduler, t.warmup_ratio, t.logging_steps, t.gradient_checkpointing = 'constant', 0.0, 5, ckpt
    t.checkpoint_every, t.liger_kernel, t.nan_guard, t.grad_norm_alarm = extra.get('every', 1), extra.get('liger', True), False, None
    t.offload, t.cuda_graphs = extra.get('offload', 'none'), extra.get('cuda_graphs', False)
    c.data.sequence_len, c.data.padding_free, c.output.output_dir = seq, extra.get('padding_free', False), tempfile.mkdtemp()
    t0 = time.time()
    model, tok = load_model(c)
    load_s, after_load = time.time() - t0, torch.cuda.max_memory_allocated() / 2**30
    model = attach_lora(model, c)
    ids = rows(model.config.vocab_size, seq, max(steps * mbs, 8), chat)
    ds = datasets.Dataset.from_list([{'input_ids': r, 'labels': r} for r in ids])
    data = PreparedData(ds, None, 'synthetic', [[(0, i)] for i in range(len(ids))], ['synthetic'])
    times, seen, prof = [], [], {}
    class Timer(TrainerCallback):
        def on_step_begin(self, a, s, c_, **k):
            if extra.get('profile') and s.global_step == 4: prof['p'] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]).__enter__()
            torch.cuda.synchronize(); self.t = time.time()
        def on_step_end(self, a, s, c_, **k):
            torch.cuda.synchronize(); times.append(time.time() - self.t); seen.append(s.num_input_tokens_seen)
            if 'p' in prof and 'summary' not in prof: prof['p'].__exit__(None, None, None); prof['summary'] = profile_summary(prof['p'], times[-1], extra['profile'])
    tr = build_trainer(c, model, tok, data, [Timer()])
    t0 = time.time(); tr.train(); total = time.time() - t0
    liger_on = 'Liger' in repr(model.get_base_model().model.norm)  # the trainer applies Liger in train(), to the instance
    fused_on = sum(1 for m in model.modules() if 'forward' in vars(m))
    mlp_on = sum(1 for m in model.modules() if '_qlora_prev_forward' in vars(m) and m.forward.__func__.__name__ == '_mlp_forward')
    skip = min(3, len(times) - 1); steady = times[skip:]
    losses = [r['loss'] for r in tr.state.log_history if 'loss' in r]
    out = dict(tokens_per_s=round((seen[-1] - seen[skip - 1]) / sum(steady), 1), step_s_median=round(sorted(steady)[len(steady) // 2], 3),
               peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), after_load_gib=round(after_load, 2), load_s=round(load_s, 1),
               train_s=round(total, 1), steps=len(times), final_loss=losses[-1] if losses else None, liger_applied=liger_on, fused_layers=fused_on, fused_mlps=mlp_on)
    if (g := getattr(model, '_qlora_nb_graphs', None)) is not None: out['graphs'] = dict(replays=g.replays, captures=g.captures, eager=dict(g.eager))
    if 'summary' in prof: out['profile'] = prof['summary']
    del tr, model; gc.collect(); torch.cuda.empty_cache()
    return out


def profile_summary(p, step_s:float, trace:str) -> dict:
    "One profiled step: GPU busy time (the union of kernel intervals) against the step's wall time, launches, top kernels."
    spans = sorted((e.time_range.start, e.time_range.end) for e in p.events() if e.device_type.name == 'CUDA')
    busy, end = 0.0, 0.0
    for a, b in spans:
        if b > end: busy += b - max(a, end); end = b
    top = sorted(p.key_averages(), key=lambda e: -e.device_time_total)[:15]
    cpu = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:30]  # where the host's time goes
    if trace: p.export_chrome_trace(trace)
    return dict(step_s=round(step_s, 4), gpu_busy_s=round(busy / 1e6, 4), idle_pct=round(100 * (1 - busy / 1e6 / step_s), 1), kernels=len(spans),
                top=[(e.key[:70], e.count, round(e.device_time_total / 1e3, 2)) for e in top],
                cpu_s=round(sum(e.self_cpu_time_total for e in p.key_averages()) / 1e6, 4),
                cpu_top=[(e.key[:70], e.count, round(e.self_cpu_time_total / 1e3, 2)) for e in cpu])


def child(cells:list[dict]):
    for cl in cells:
        try: res = our_cell(**{k: v for k, v in cl.items() if k != 'key'})
        except Exception as e:
            import traceback; traceback.print_exc(); res = {'error': repr(e)[:300]}
        print('CELL ' + json.dumps({'key': cl['key']} | res), flush=True)


# --- the parent: make the checkpoints, run every stack, print the table ---------------------------------------------
def anchors_dir() -> Path:
    for p in (ROOT/'.gpu'/'bench', ROOT.parent/'.gpu'/'bench', ROOT.parent/'shared'/'bench'):  # a .wt-* copy sits inside the lead's checkout
        if (p/'anchor_hf.py').exists(): return p
    raise SystemExit('anchor scripts not found: run ../shared/gpu/prep --unsloth and carry .gpu')


def run_json(cmd:list[str], env=None, timeout=900) -> list[dict]:
    "Run a command; the JSON objects it printed one per line (a `CELL ` prefix is ours)."
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    out = []
    for line in p.stdout.splitlines():
        line = line.removeprefix('CELL ')
        if line.startswith('{'):
            try: out.append(json.loads(line))
            except json.JSONDecodeError: pass
    if p.returncode or not out: print(f'! {" ".join(cmd[:4])}... exit {p.returncode}\n{p.stderr[-3000:]}', flush=True)
    print(f'  ({time.time() - t:.0f}s) {" ".join(Path(c).name if "/" in c else c for c in cmd[1:8])}', flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--part', default='lean,24gib,1b,chat', help=f'workloads, of {",".join(WORKLOADS)}')
    ap.add_argument('--stacks', default='qlora_nb,unsloth', help=f'these stacks, of {",".join(dict.fromkeys(s for w in WORKLOADS.values() for s in w["cands"]))}; `all` for every one')
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'results'/'vs_unsloth.json'))
    ap.add_argument('--profile', default='', help="a folder: profile qlora_nb's 5th step of each cell there (a Chrome trace) and add a summary to its result")
    ap.add_argument('--child', help='(internal) JSON list of qlora_nb cells to run here')
    ap.add_argument('--table', nargs='*', help='print the table of these result files together, and run nothing')
    a = ap.parse_args()
    if a.child: return child(json.loads(a.child))
    if a.table is not None:
        return print(table([r for f in a.table for r in json.loads(Path(f).read_text())['results']]))
    import torch
    anchors = anchors_dir()
    sys.path.insert(0, str(anchors))
    from anchor_hf import make_model
    parts = a.part.split(',')
    only = None if a.stacks == 'all' else set(a.stacks.split(','))
    py, env = sys.executable, os.environ.copy()
    uns_env = env | {'PYTHONPATH': f'{ROOT}:/tmp/site-unsloth'}
    for key in dict.fromkeys(WORKLOADS[p]['shape'] for p in parts):  # made here, in one process: no start-up per shape
        shape, path = SHAPES[key]
        if not Path(path, 'config.json').exists():
            t = time.time(); make_model(shape, path, 'cuda'); print(f'  ({time.time() - t:.0f}s) made {shape} at {path}', flush=True)
    torch.cuda.empty_cache()
    results, ours = [], []
    def save():
        for r in results:
            w = WORKLOADS[r['part']]
            if 'tokens_per_s' in r:
                cfg = json.loads(Path(SHAPES[w['shape']][1], 'config.json').read_text())
                r['mfu'] = round(r['tokens_per_s'] * flops_per_token(cfg, _lengths(w)) / (PEAK_TFLOPS * 1e12), 3)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), date=time.strftime('%Y-%m-%d'), results=results), indent=1))
    for part in parts:
        w = WORKLOADS[part]; shape, path = SHAPES[w['shape']]
        for stack, cands in w['cands'].items():
            if only and stack not in only: continue
            for mbs, ckpt, extra in cands:
                key = f'{part}|{stack}|mbs{mbs}|{"ckpt" if ckpt else "nockpt"}' + (f'|every{extra["every"]}' if 'every' in extra else '') + (f'|offload-{extra["offload"]}' if 'offload' in extra else '') + ('|graphs' if extra.get('cuda_graphs') else '')
                if stack.startswith('qlora_nb'):
                    prof = {'profile': f'{a.profile}/{key.replace("|", "_")}.json.gz'} if a.profile else {}
                    ours.append(dict(key=key, path=path, seq=2048, mbs=mbs, ckpt=ckpt, steps=w['steps'], chat=w['chat'], extra=extra | prof))
                elif stack.startswith('hf'):
                    cmd = [py, str(anchors/'anchor_hf.py'), '--shape', shape, '--path', path, '--mbs', str(mbs), '--steps', str(w['steps']),
                           '--variants', 'liger' if stack == 'hf+liger' else 'plain'] + ([] if ckpt else ['--no-ckpt']) + (['--chat'] if w['chat'] else [])
                    results += [r | {'key': key, 'part': part, 'stack': stack} for r in run_json(cmd)]
                else:
                    cmd = [py, str(anchors/'anchor_unsloth.py'), '--path', path, '--mbs', str(mbs), '--steps', str(w['steps'])] + \
                          ([] if ckpt else ['--no-ckpt']) + (['--chat'] if w['chat'] else [])
                    results += [r | {'key': key, 'part': part, 'stack': 'unsloth'} for r in run_json(cmd, uns_env)]
                save()
        # A process per cell: Liger patches classes for good, and a cell after another in one process starts with ~1 GiB of
        # the last one's memory still held (seen as after_load_gib growing 5.4 -> 6.5 -> 7.4 in the last round), which a peak would count.
        for o in ours:
            for r in run_json([py, __file__, '--child', json.dumps([o])], timeout=1800):
                results.append(r | {'part': r['key'].split('|')[0], 'stack': r['key'].split('|')[1]})
            save()
        ours = []
    print(table(results))


def _lengths(w:dict) -> list[int]:
    if not w['chat']: return [2048]
    sys.path.insert(0, str(anchors_dir()))
    from anchor_hf import chat_lengths
    return chat_lengths(w['steps'] * 8, 2048)


def best(results:list[dict], part:str, stack:str, budget:float|None) -> dict|None:
    ok = [r for r in results if r.get('part') == part and r.get('stack') == stack and 'tokens_per_s' in r
          and (budget is None or (r.get('peak_gib') or 1e9) <= budget)]
    return max(ok, key=lambda r: r['tokens_per_s']) if ok else None


def table(results:list[dict]) -> str:
    lines = ['| workload | stack | setting | tokens/s | peak GiB | MFU | x hf | x hf+liger | x unsloth |', '|---|---|---|---|---|---|---|---|---|']
    for part, w in WORKLOADS.items():
        stacks = [s for s in w['cands'] if best(results, part, s, w['budget'])]
        ref = {s: best(results, part, s, w['budget']) for s in ('hf', 'hf+liger', 'unsloth')}
        for s in stacks:
            r = best(results, part, s, w['budget'])
            ratio = lambda k: f"{r['tokens_per_s'] / ref[k]['tokens_per_s']:.2f}" if ref[k] else ''
            lines.append(f"| {part} | {s} | {' '.join(r['key'].split('|')[2:])} | {r['tokens_per_s']:,.0f} | {r['peak_gib']} | {r.get('mfu', 0):.1%} | "
                         f"{ratio('hf')} | {ratio('hf+liger')} | {ratio('unsloth')} |")
    fails = [r for r in results if 'error' in r]
    return '\n'.join(lines + [f'failed: {r.get("key")}: {r["error"]}' for r in fails])


if __name__ == '__main__':
    main()
