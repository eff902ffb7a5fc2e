"""Data-parallel scaling: the same QLoRA run (Llama-3.1-8B shape by default, 4-bit, r=16) on 1 and on N GPUs via accelerate.

    python benchmarks/ddp_scaling.py --gpus 1,2
Each size runs `accelerate launch --num_processes N benchmarks/ddp_scaling.py --child ...`; rank 0 prints
the global tokens/s (all processes' tokens) over the steps after the first few.
"""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))


def child(path, shape, seq, mbs, steps):
    import torch
    from memory_accuracy import synthetic
    from qlora_nb.config import Config
    from qlora_nb.model import load_model
    from qlora_nb.lora import attach_lora
    from qlora_nb.train import build_trainer
    from qlora_nb.live import MetricsCallback
    world = int(os.environ.get('WORLD_SIZE', 1))
    c = Config(); c.model.base_model = path
    t = c.training
    c.data.sequence_len, t.micro_batch_size, t.gradient_accumulation_steps, t.max_steps = seq, mbs, 1, steps
    t.warmup_ratio, t.logging_steps, c.output.output_dir = 0.0, 1, tempfile.mkdtemp()
    model, tok = load_model(c)
    model = attach_lora(model, c)
    m = MetricsCallback()
    tr = build_trainer(c, model, tok, synthetic(mbs * steps * world, seq), [m])
    tr.train()
    if tr.is_world_process_zero():
        times = [r['elapsed_s'] for r in m.history if 'loss' in r]
        skip = 3
        rate = (len(times) - 1 - skip) * mbs * seq * world / (times[-1] - times[skip])
        print('RESULT ' + json.dumps(dict(gpus=world, seq=seq, mbs=mbs, steps=steps, tokens_per_s=round(rate, 1),
                                          peak_gib_rank0=round(torch.cuda.max_memory_allocated() / 2**30, 3))), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--gpus', default='1,2'); ap.add_argument('--shape', default='llama-3.1-8b')
    ap.add_argument('--seq', type=int, default=2048); ap.add_argument('--mbs', type=int, default=4); ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--child', action='store_true'); ap.add_argument('--path')
    a = ap.parse_args()
    if a.child: return child(a.path, a.shape, a.seq, a.mbs, a.steps)
    from memory_accuracy import random_checkpoint
    path = random_checkpoint(a.shape, Path('/tmp/qlora_nb_models')/a.shape)
    res = []
    for n in map(int, a.gpus.split(',')):
        cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_processes', str(n), '--num_machines', '1', '--mixed_precision', 'no',
               '--dynamo_backend', 'no', *(['--multi_gpu'] if n > 1 else []), __file__, '--child', '--path', str(path),
               '--shape', a.shape, '--seq', str(a.seq), '--mbs', str(a.mbs), '--steps', str(a.steps)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in r.stdout.splitlines() if l.startswith('RESULT ')), None)
        res.append(json.loads(line[7:]) if line else dict(gpus=n, error=r.stderr[-800:]))
        print(json.dumps(res[-1]), flush=True)
    if len(res) > 1 and all('tokens_per_s' in r for r in res):
        print(f'scaling {res[0]["gpus"]} -> {res[-1]["gpus"]} GPUs: {res[-1]["tokens_per_s"] / res[0]["tokens_per_s"]:.2f}x')


if __name__ == '__main__':
    main()
