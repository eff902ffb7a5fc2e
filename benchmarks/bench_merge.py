"""Peak memory of `qlora_nb.merge.merge_adapter` on a large random checkpoint, against peft's `merge_and_unload`.

    python benchmarks/bench_merge.py [--shape 1b|3b|8b|70b] [--layers N] [--mode base|dequantized] [--peft] [--export] [--dir DIR]

Builds a random bfloat16 checkpoint of a Llama 3 shape (sharded safetensors, written tensor by tensor so the
builder itself stays small) and a random rank-16 all-linear adapter, then merges in a fresh process and
reports that process's peak resident memory (VmHWM, which also counts the pages of any memory-mapped file
it touched). `--peft` also times the classic recipe (`from_pretrained` + `PeftModel` +
`merge_and_unload` + `save_pretrained`) for comparison; `--export` also measures the Q8_0 GGUF export of the
merged model. The 8B shape needs about 30 GiB of free disk. `--layers` keeps the shape's tensors but builds fewer decoder
layers: the 70B shape's 141 GiB do not fit most disks, and the peak depends on the largest tensors and the shards,
not on how many layers there are (compare two layer counts to see it).
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

SHAPES = {  # Llama 3.2 1B, Llama 3.2 3B, Llama 3.1 8B, Llama 3.1 70B
    '1b': dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    '3b': dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, tie_word_embeddings=True),
    '8b': dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    '70b': dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                tie_word_embeddings=False),
}
VOCAB, RANK = 128256, 16
TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')


def _shapes(s):
    "Checkpoint tensor name -> shape, in Llama's order."
    h, i, kv = s['hidden_size'], s['intermediate_size'], s['num_key_value_heads'] * s['hidden_size'] // s['num_attention_heads']
    out = {'model.embed_tokens.weight': (VOCAB, h)}
    for l in range(s['num_hidden_layers']):
        p = f'model.layers.{l}.'
        out |= {p+'input_layernorm.weight': (h,), p+'self_attn.q_proj.weight': (h, h), p+'self_attn.k_proj.weight': (kv, h),
                p+'self_attn.v_proj.weight': (kv, h), p+'self_attn.o_proj.weight': (h, h), p+'post_attention_layernorm.weight': (h,),
                p+'mlp.gate_proj.weight': (i, h), p+'mlp.up_proj.weight': (i, h), p+'mlp.down_proj.weight': (h, i)}
    out['model.norm.weight'] = (h,)
    if not s['tie_word_embeddings']: out['lm_head.weight'] = (VOCAB, h)
    return out


def build(d:Path, shape:str, shard_gib:float=2.0, layers:int|None=None):
    "Write the random checkpoint and adapter into `d` (reused when present); `layers`: fewer decoder layers than the shape has."
    import torch, transformers, peft
    from safetensors.torch import save_file
    from qlora_nb.merge import write_safetensors, _shards, nbytes
    s = SHAPES[shape] | ({'num_hidden_layers': layers} if layers else {})
    name = f'{shape}-{layers}layers' if layers else shape
    base, adapter = d/f'base-{name}', d/f'adapter-{name}'
    if not (base/'config.json').exists():
        base.mkdir(parents=True, exist_ok=True)
        specs = [(k, 'BF16', v) for k,v in _shapes(s).items()]
        groups = _shards(specs, int(shard_gib * 2**30))
        names = [f'model-{i+1:05d}-of-{len(groups):05d}.safetensors' for i in range(len(groups))]
        g = torch.Generator().manual_seed(0)
        def tensors(group):
            for k,_,sh in group: yield (torch.randn(sh, generator=g) * 0.02).bfloat16() if len(sh) == 2 else torch.ones(sh, dtype=torch.bfloat16)
        for n,grp in zip(names, groups): write_safetensors(base/n, grp, tensors(grp))
        (base/'model.safetensors.index.json').write_text(json.dumps({'metadata': {'total_size': sum(nbytes(*x[1:]) for x in specs)},
                                                                       'weight_map': {x[0]: n for n,grp in zip(names, groups) for x in grp}}))
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, architectures=['LlamaForCausalLM'], dtype='bfloat16', **s)
        cfg.save_pretrained(base)
        from qlora_nb.tiny import make_tokenizer
        make_tokenizer('llama').save_pretrained(base)
    if not (adapter/'adapter_config.json').exists():
        adapter.mkdir(parents=True, exist_ok=True)
        g, out = torch.Generator().manual_seed(1), {}
        for k,sh in _shapes(s).items():
            if any(f'.{t}.' in k for t in TARGETS):
                m = 'base_model.model.' + k.removesuffix('.weight')
                out[m + '.lora_A.weight'] = torch.randn(RANK, sh[1], generator=g) * 0.01
                out[m + '.lora_B.weight'] = torch.randn(sh[0], RANK, generator=g) * 0.01
        save_file(out, adapter/'adapter_model.safetensors', metadata={'format': 'pt'})
        peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=list(TARGETS), base_model_name_or_path=str(base)).save_pretrained(adapter)
    return base, adapter


def _gib(p:Path): return sum(f.stat().st_size for f in p.glob('*.safetensors')) / 2**30


def peak_rss_gib() -> float:
    "This process's peak resident memory: VmHWM, which starts afresh at exec (ru_maxrss would include the parent's at fork)."
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(kind, base, adapter, out, mode):
    "Run one merge (or export) in this process (called in a fresh subprocess) and print its figures as JSON."
    import shutil
    t = time.time()
    if kind == 'export':
        from qlora_nb.merge import merge_adapter
        from qlora_nb.export import export_gguf
        merged = merge_adapter(base, adapter, Path(out).with_name('merged-for-export'), mode=mode, overwrite=True).path
        t = time.time()
        export_gguf(merged, out, ['q8_0'], overwrite=True)
        shutil.rmtree(merged)
    elif kind == 'qlora_nb':
        from qlora_nb.merge import merge_adapter
        merge_adapter(base, adapter, out, mode=mode, overwrite=True)
    else:
        import torch, transformers, peft
        m = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        m = peft.PeftModel.from_pretrained(m, adapter).merge_and_unload()
        m.save_pretrained(out)
    size = sum(f.stat().st_size for f in Path(out).glob('*.gguf')) / 2**30
    print(json.dumps({'seconds': time.time() - t, 'peak_rss_gib': peak_rss_gib(), 'gguf_gib': size}))
    shutil.rmtree(out, ignore_errors=True)


def measure(kind, base, adapter, out, mode):
    r = subprocess.run([sys.executable, __file__, '--child', kind, str(base), str(adapter), str(out), mode], capture_output=True, text=True,
                       env={**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2')})
    if r.returncode: raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--shape', choices=list(SHAPES), default='1b')
    ap.add_argument('--layers', type=int, help="decoder layers to build (default: the shape's own)")
    ap.add_argument('--mode', choices=['base', 'dequantized'], default='base')
    ap.add_argument('--peft', action='store_true', help='also measure peft merge_and_unload + save_pretrained')
    ap.add_argument('--export', action='store_true', help='also measure the Q8_0 GGUF export of the merged model')
    ap.add_argument('--dir', default='/tmp/qlora_nb_bench', help='where the checkpoint, adapter and outputs go')
    ap.add_argument('--child', nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(*a.child)
    d = Path(a.dir)
    t = time.time()
    base, adapter = build(d, a.shape, layers=a.layers)
    shards = sorted(base.glob('*.safetensors'))
    print(f'checkpoint: Llama-3 {a.shape} shape{f" ({a.layers} layers)" if a.layers else ""}, bfloat16, {_gib(base):.2f} GiB in {len(shards)} shards (largest {max(f.stat().st_size for f in shards)/2**30:.2f} GiB); '
          f'adapter rank {RANK} all-linear: {_gib(adapter):.3f} GiB (built in {time.time()-t:.0f}s)')
    r = measure('qlora_nb', base, adapter, d/'merged', a.mode)
    print(f'qlora_nb merge_adapter ({a.mode}): peak RSS {r["peak_rss_gib"]:.2f} GiB, {r["seconds"]:.0f}s')
    if a.peft:
        r = measure('peft', base, adapter, d/'merged-peft', a.mode)
        print(f'peft merge_and_unload + save_pretrained: peak RSS {r["peak_rss_gib"]:.2f} GiB, {r["seconds"]:.0f}s')
    if a.export:
        r = measure('export', base, adapter, d/'gguf', a.mode)
        print(f'qlora_nb export_gguf q8_0 ({r["gguf_gib"]:.2f} GiB file): peak RSS {r["peak_rss_gib"]:.2f} GiB (merge included), export {r["seconds"]:.0f}s')


if __name__ == '__main__': main()
