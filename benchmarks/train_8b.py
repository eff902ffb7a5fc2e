"""It really learns, at scale: an 8B-shaped random checkpoint QLoRA-trained for 50 steps on synthetic rows with a
learnable pattern (arithmetic progressions of token ids). Prints the loss every 10 steps, tokens/s and peak memory.

    python benchmarks/train_8b.py [--steps 50] [--seq 2048] [--mbs 4]
"""
import argparse, json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from memory_accuracy import random_checkpoint, synthetic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=50); ap.add_argument('--seq', type=int, default=2048); ap.add_argument('--mbs', type=int, default=4)
    ap.add_argument('--root', default='/tmp/qlora_nb_models'); ap.add_argument('--shape', default='llama-3.1-8b')
    a = ap.parse_args()
    import torch
    from qlora_nb.config import Config
    from qlora_nb.model import load_model
    from qlora_nb.lora import attach_lora
    from qlora_nb.train import build_trainer
    from qlora_nb.live import MetricsCallback
    path = random_checkpoint(a.shape, Path(a.root)/a.shape)
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()  # building the checkpoint held it whole in bf16
    c = Config(); c.model.base_model = str(path)
    t = c.training
    c.data.sequence_len, t.micro_batch_size, t.gradient_accumulation_steps, t.max_steps = a.seq, a.mbs, 1, a.steps
    t.learning_rate, t.warmup_ratio, t.warmup_steps, c.output.output_dir = 1e-3, 0.0, 5, tempfile.mkdtemp()
    model, tok = load_model(c)
    model = attach_lora(model, c)
    m = MetricsCallback()
    trainer = build_trainer(c, model, tok, synthetic(a.mbs * a.steps, a.seq, learnable=True), [m])
    t0 = time.time(); trainer.train(); took = time.time() - t0
    losses = [(r['step'], round(r['loss'], 4)) for r in m.history if 'loss' in r]
    tps = [r['tokens_per_s'] for r in m.history if 'tokens_per_s' in r][5:]
    out = dict(shape=a.shape, gpu=torch.cuda.get_device_name(), seq=a.seq, mbs=a.mbs, steps=a.steps, seconds=round(took, 1),
               tokens_per_s_median=round(sorted(tps)[len(tps)//2], 1) if tps else None, peak_gib=round(torch.cuda.max_memory_allocated()/2**30, 3),
               loss_first=losses[0][1], loss_last=losses[-1][1], losses_every_10=[l for l in losses if l[0] % 10 == 0 or l[0] == 1])
    print('RESULT ' + json.dumps(out), flush=True)


if __name__ == '__main__':
    main()
