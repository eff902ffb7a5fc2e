"""How the demo's settings were chosen: train the demo with other settings and report what it learned and kept.

    python benchmarks/demo_tuning.py NAME --steps 40 --set training.learning_rate=5e-4 --set lora.r=8

Pin it to two cores (`taskset -c 0,1`, OMP_NUM_THREADS=2) to time it like the 2-core CI machine.
"""
import argparse, json
from qlora_nb.cli import parse_sets
from qlora_nb.demo import DEMO_STEPS, demo

ap = argparse.ArgumentParser()
ap.add_argument('name'); ap.add_argument('--steps', type=int, default=DEMO_STEPS)
ap.add_argument('--set', action='append')
a = ap.parse_args()
d = demo(f'/tmp/demo-{a.name}', a.steps, parse_sets(a.set))
r = d.train
print('VARIANT ' + json.dumps(dict(name=a.name, steps=a.steps, sets=a.set, taught=d.taught, of=len(d.persona),
                                   known_before=d.known_before, known_after=d.known_after, seconds=round(d.seconds),
                                   eval_before=round(r.eval_before, 3), eval_after=round(r.eval_after, 3), last_loss=round(r.losses[-1], 3))))
print(d.report())
