"Two processes through accelerate (gloo on the CPU): the same path DDP takes on GPUs."
import json
from qlora_nb.config import Config, save_config
from qlora_nb.multigpu import launch


def test_two_processes_on_cpu(tmp_path):
    c = Config()
    c.output.output_dir = str(tmp_path/'out')
    t = c.training
    t.max_steps, t.micro_batch_size, t.gradient_accumulation_steps, t.warmup_ratio, t.warmup_steps = 3, 2, 1, 0.0, 1
    path = save_config(c, tmp_path/'run.yaml')
    assert launch(str(path), 2, cpu=True) == 0
    hist = [json.loads(l) for l in (tmp_path/'out'/'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in hist if 'loss' in r] == [1, 2, 3]
    assert (tmp_path/'out'/'adapter_model.safetensors').exists()
