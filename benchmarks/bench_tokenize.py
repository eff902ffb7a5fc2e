"""Tokenizing speed of qlora_nb's data pipeline next to trl's SFTTrainer dataset preparation, on the same rows.

    python benchmarks/bench_tokenize.py [--alpaca 100000] [--chat 20000] [--check 500]

Both sides use tiny-llama's fast byte-level BPE tokenizer and the Llama 3 chat template, and train only the
answers: qlora_nb through `prepare_data` (reading the JSONL files, formatting, rendering, labelling, the
report), trl through `SFTTrainer._prepare_dataset` with `assistant_only_loss=True` (conversations, with a
`{% generation %}`-marked copy of the template, which trl requires) and prompt-completion rows (alpaca, which
trl cannot read as such: they are converted to its conversational prompt/completion form beforehand, untimed).
Before timing, the trained tokens of both are compared on `--check` rows of each kind. Prints rows/s.
"""
import argparse, json, os, random, tempfile, time, types, warnings
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
warnings.filterwarnings('ignore')

WORDS = ('the of and to in is a that it for on with as was at by be this from have or are not but which you all one can '
         'there were more when will about would their what so if who how help today answer question hello please thank '
         'yes no good day time people world number word small large first last many new Paris Berlin capital').split()

GEN_LLAMA3 = ("{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
              "{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
              "{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}{%- endfor %}"
              "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def say(rng, lo, hi): return ' '.join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + '.'

def make_rows(n_alpaca, n_chat, seed=0):
    rng = random.Random(seed)
    alpaca = [{'instruction': say(rng, 5, 30), 'input': say(rng, 0, 20) if rng.random() < 0.4 else '', 'output': say(rng, 10, 80)} for _ in range(n_alpaca)]
    chat = []
    for _ in range(n_chat):
        msgs = [{'role': 'system', 'content': say(rng, 4, 12)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(2, 4)): msgs += [{'role': 'user', 'content': say(rng, 5, 30)}, {'role': 'assistant', 'content': say(rng, 10, 60)}]
        chat.append({'messages': msgs})
    return alpaca, chat

def alpaca_to_trl(r):
    user = f"{r['instruction']}\n\n{r['input']}" if r['input'].strip() else r['instruction']
    return {'prompt': [{'role': 'user', 'content': user}], 'completion': [{'role': 'assistant', 'content': r['output']}]}

def ours(tok, path, kind, limit=None):
    from qlora_nb.config import Config, DatasetConfig
    from qlora_nb.data import prepare_data
    c = Config(); c.data.sequence_len = 4096; c.data.shuffle = False
    c.data.datasets = [DatasetConfig(path=str(path), type=kind, limit=limit)]
    return prepare_data(c, tok, cache=False)

def trl_prepare(tok, ds):
    from trl import SFTConfig, SFTTrainer
    args = SFTConfig(output_dir=tempfile.mkdtemp(), assistant_only_loss=True, max_length=4096, report_to='none', use_cpu=True, bf16=False)
    fake = types.SimpleNamespace(_tokenizer=tok, chat_template=tok.chat_template, completion_only_loss=True)
    return SFTTrainer._prepare_dataset(fake, ds, tok, args, False, None, 'train')

def trl_trained(row): return [l for l in row['labels'] if l != -100]

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--alpaca', type=int, default=100_000); ap.add_argument('--chat', type=int, default=20_000)
    ap.add_argument('--check', type=int, default=500)
    a = ap.parse_args()
    import datasets
    from transformers import AutoTokenizer
    from qlora_nb.tiny import build_tiny
    from qlora_nb.templates import prepare_tokenizer
    from qlora_nb.config import Config
    from qlora_nb.tokenizing import IGNORE
    datasets.disable_progress_bars(); datasets.disable_caching()
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(build_tiny('tiny-llama')), Config())
    ttok = AutoTokenizer.from_pretrained(build_tiny('tiny-llama')); ttok.pad_token = tok.pad_token; ttok.chat_template = GEN_LLAMA3
    alpaca, chat = make_rows(a.alpaca, a.chat)
    tmp = Path(tempfile.mkdtemp())
    for name, rows in (('alpaca', alpaca), ('chat', chat)):
        (tmp/f'{name}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    trl_in = {'alpaca': datasets.Dataset.from_list([alpaca_to_trl(r) for r in alpaca]), 'chat': datasets.Dataset.from_list(chat)}
    kinds = {'alpaca': 'alpaca', 'chat': 'messages'}

    for name in ('alpaca', 'chat'):  # equal correctness first
        n = min(a.check, len(trl_in[name]))
        mine = ours(tok, tmp/f'{name}.jsonl', kinds[name], limit=n).train
        theirs = trl_prepare(ttok, trl_in[name].select(range(n)))
        same = sum([l for l in m['labels'] if l != IGNORE] == trl_trained(t) for m, t in zip(mine, theirs))
        print(f'{name}: trained tokens identical to trl on {same}/{n} rows')

    print(f'{"rows":>8} {"kind":>7} {"qlora_nb rows/s":>16} {"trl rows/s":>11} {"speedup":>8}')
    for name in ('alpaca', 'chat'):
        t0 = time.perf_counter(); mine = ours(tok, tmp/f'{name}.jsonl', kinds[name]); t1 = time.perf_counter()
        theirs = trl_prepare(ttok, trl_in[name]); t2 = time.perf_counter()
        assert len(mine.train) == len(theirs) == len(trl_in[name])
        n = len(trl_in[name])
        print(f'{n:>8} {name:>7} {n/(t1-t0):>16,.0f} {n/(t2-t1):>11,.0f} {(t2-t1)/(t1-t0):>7.2f}x')

if __name__ == '__main__': main()
