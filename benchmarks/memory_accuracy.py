"""Estimated vs measured peak GPU memory of QLoRA training (issue 4's accuracy table).

For Llama-3.2-1B- and Llama-3.1-8B-shaped random checkpoints (random weights cost the same bytes as real ones),
each cell (sequence length x micro batch x checkpointing) trains a few steps through qlora_nb's own path
(`load_model` -> `attach_lora` -> `build_trainer`) in a fresh process, and compares
`torch.cuda.max_memory_allocated` with `estimate(config).allocator_peak_gib`.

    python benchmarks/memory_accuracy.py [--shapes llama-3.2-1b,llama-3.1-8b] [--out results.md]
"""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path


def random_checkpoint(shape:str, path:Path):
    "A random-weight checkpoint of a reference shape, with the tiny Llama tokenizer (ids stay below its vocab)."
    import torch, transformers
    from transformers import AutoTokenizer
    from qlora_nb.estimate import _transformers_config
    from qlora_nb.tiny import build_tiny
    if (path/'config.json').exists(): return path
    cfg = _transformers_config(shape); cfg.dtype = 'bfloat16'
    t = time.time()
    with torch.device('cuda'): m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    m.save_pretrained(path, max_shard_size='5GB')
    AutoTokenizer.from_pretrained(build_tiny('tiny-llama')).save_pretrained(path)
    del m; torch.cuda.empty_cache()
    print(json.dumps({'event': 'made', 'shape': shape, 's': round(time.time() - t, 1)}), flush=True)
    return path


def synthetic(n:int, seq:int, seed:int=0, learnable:bool=False):
    "Prepared data of `n` rows of exactly `seq` tokens; `learnable` rows follow a pattern a model can learn."
    import datasets, torch
    from qlora_nb.data import PreparedData
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        if learnable:
            start, step = int(torch.randint(100, 1000, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
            ids = [(start + step * j) % 1800 + 100 for j in range(seq)]
        else: ids = torch.randint(100, 1900, (seq,), generator=g).tolist()
        rows.append({'input_ids': ids, 'labels': ids})
    return PreparedData(datasets.Dataset.from_list(rows), None, 'synthetic', [[(0, i)] for i in range(n)], ['synthetic'])


def cell(model_path:str, shape:str, seq:int, mbs:int, ckpt:bool, steps:int=3) -> dict:
    "Train `steps` steps in this process; measured and estimated peaks."
    import torch
    from qlora_nb.config import Config
    from qlora_nb.model import load_model
    from qlora_nb.lora import attach_lora
    from qlora_nb.train import build_trainer
    from qlora_nb.estimate import estimate, model_shape
    c = Config()
    c.model.base_model = model_path
    c.data.sequence_len, c.training.micro_batch_size, c.training.gradient_accumulation_steps = seq, mbs, 1
    c.training.gradient_checkpointing, c.training.max_steps, c.training.warmup_ratio = ckpt, steps, 0.0
    c.training.logging_steps, c.output.output_dir = 1, tempfile.mkdtemp()
    est = estimate(c, shape=model_shape(shape))
    torch.cuda.reset_peak_memory_stats()
    model, tok = load_model(c)
    static = torch.cuda.memory_allocated() / 2**30
    model = attach_lora(model, c)
    trainer = build_trainer(c, model, tok, synthetic(mbs * steps, seq))
    t = time.time()
    trainer.train()
    took = time.time() - t
    peak = torch.cuda.max_memory_allocated() / 2**30
    return dict(shape=shape, seq=seq, mbs=mbs, ckpt=ckpt, measured_gib=round(peak, 3), estimated_gib=round(est.allocator_peak_gib, 3),
                error_pct=round(100 * (est.allocator_peak_gib - peak) / peak, 2), static_gib=round(static, 3),
                total_estimate_gib=round(est.total_gib, 3), tokens_per_s=round(mbs * seq * steps / took, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--shapes', default='llama-3.2-1b,llama-3.1-8b')
    ap.add_argument('--seqs', default='512,2048'); ap.add_argument('--mbs', default='1,4'); ap.add_argument('--ckpt', default='1,0')
    ap.add_argument('--root', default='/tmp/qlora_nb_models'); ap.add_argument('--out', default=None)
    ap.add_argument('--child', nargs=5, metavar=('PATH', 'SHAPE', 'SEQ', 'MBS', 'CKPT'))
    a = ap.parse_args()
    if a.child:
        p, shape, seq, mbs, ck = a.child
        try: print('RESULT ' + json.dumps(cell(p, shape, int(seq), int(mbs), ck == '1')), flush=True)
        except Exception as e:
            import torch
            print('RESULT ' + json.dumps(dict(shape=shape, seq=int(seq), mbs=int(mbs), ckpt=ck == '1', error=f'{type(e).__name__}: {str(e)[:200]}')), flush=True)
        return
    rows = []
    for shape in a.shapes.split(','):
        path = random_checkpoint(shape, Path(a.root)/shape)
        for seq in map(int, a.seqs.split(',')):
            for mbs in map(int, a.mbs.split(',')):
                for ck in a.ckpt.split(','):
                    r = subprocess.run([sys.executable, __file__, '--child', str(path), shape, str(seq), str(mbs), ck], capture_output=True, text=True)
                    line = next((l for l in r.stdout.splitlines() if l.startswith('RESULT ')), None)
                    res = json.loads(line[7:]) if line else dict(shape=shape, seq=seq, mbs=mbs, ckpt=ck == '1', error=r.stderr[-300:])
                    print(json.dumps(res), flush=True); rows.append(res)
    import torch
    lines = [f'Measured on {torch.cuda.get_device_name()} with `python benchmarks/memory_accuracy.py` ({time.strftime("%Y-%m-%d")}).', '',
             '| shape | seq | micro batch | checkpointing | measured GiB | estimated GiB | error |', '|---|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r: lines.append(f'| {r["shape"]} | {r["seq"]} | {r["mbs"]} | {"on" if r["ckpt"] else "off"} | {r["error"][:60]} | | |')
        else: lines.append(f'| {r["shape"]} | {r["seq"]} | {r["mbs"]} | {"on" if r["ckpt"] else "off"} | {r["measured_gib"]:.3f} | {r["estimated_gib"]:.3f} | {r["error_pct"]:+.1f}% |')
    ok = [abs(r['error_pct']) for r in rows if 'error_pct' in r]
    if ok: lines += ['', f'{len(ok)} cells measured; largest error {max(ok):.1f}%.']
    text = '\n'.join(lines) + '\n'
    print(text)
    if a.out: Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(text)


if __name__ == '__main__':
    main()
