"""Merge and export, on the real SmolLM2-135M-Instruct with a random adapter: the merge equals peft, the GGUF reads back
right (gguf and transformers' own GGUF loader), and llama.cpp itself (the `xllamacpp` wheels) tokenizes, scores and
answers as transformers does. The tiny models add the Qwen2 and Llama 3.1 rotary cases and the CLI's edges."""
import json, os, shutil, urllib.request
import numpy as np
import pytest
import yaml

from conftest import qlora_nb_cli
from qlora_nb.cli import run

REAL = 'builtin:smollm2-135m'
PROMPTS = ['What is the capital of France?', 'Hello! How can I help you today?', 'What is 3 plus 4?']
CHATS = [[{'role': 'user', 'content': p}] for p in PROMPTS] + [[
    {'role': 'system', 'content': 'You answer in one word.'}, {'role': 'user', 'content': 'Name a colour.'},
    {'role': 'assistant', 'content': 'Blue.'}, {'role': 'user', 'content': 'Another one, 2 of them?'}]]
# Largest |logit difference| / largest |logit| at the first answer position, llama.cpp vs transformers on the merged
# model. Measured on SmolLM2 with this adapter: f16 0.09-0.13% (the issue measured 0.13%), q8_0 (which
# also quantizes the activations) 2.2-3.2%; its greedy answer may then differ, so only f16's is compared.
TOL = {'f16': 0.01, 'q8_0': 0.06}
N_ANSWER = 12  # greedy answer tokens compared (the answers to these chats are shorter: they end on <|im_end|>)


def _adapter(base, out, seed=0, b_std=None, **kw):
    "A random LoRA adapter for `base` (non-zero B: `b_std` when given, else peft's default init), saved with peft as the trainer would; returns the PeftModel."
    import peft, torch, transformers
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = peft.get_peft_model(m, peft.LoraConfig(**{'r': 8, 'lora_alpha': 16, 'target_modules': 'all-linear', 'init_lora_weights': False, **kw}))
    if b_std is not None:
        with torch.no_grad():
            for n,p in pm.named_parameters():
                if 'lora_B' in n: p.normal_(0, b_std)
    pm.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return pm.eval()


def _config(tmp_path, out_dir, base='builtin:tiny-llama', **output):
    path = tmp_path/'run.yaml'
    path.write_text(yaml.safe_dump({'model': {'base_model': base}, 'data': {'datasets': [{'path': 'builtin:demo-chat'}]},
                                    'output': {'output_dir': str(out_dir), **output}}))
    return path


def _chat_ids(tok, messages):
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


# --- llama.cpp, through xllamacpp ---------------------------------------------------------------------------------

def _xllamacpp():
    "The xllamacpp module. In CI a missing install fails the run: the llama.cpp checks are never skipped there."
    if os.environ.get('CI'):
        import xllamacpp
        return xllamacpp
    return pytest.importorskip('xllamacpp', reason='the llama.cpp checks need xllamacpp, a dev extra: pip install -e ".[dev]"')


class LlamaCpp:
    "llama.cpp running one GGUF file in this process (xllamacpp's server, which also listens on a loopback port)."
    def __init__(self, path, n_ctx=512):
        xlc = _xllamacpp()
        p = xlc.CommonParams()
        p.model.path, p.n_ctx, p.n_parallel, p.warmup = str(path), n_ctx, 1, False
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 2
        self.server = xlc.Server(p)

    def post(self, route, body):
        "POST `body` to one of llama-server's own routes (`/apply-template`, `/tokenize`, ...)."
        req = urllib.request.Request(self.server.listening_address + route, json.dumps(body).encode(), {'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=120) as r: return json.loads(r.read())

    def chat_ids(self, messages):
        "`messages` rendered with the GGUF's chat template by llama.cpp's Jinja engine, then tokenized by llama.cpp as its server does (BOS added if the GGUF says so)."
        text = self.post('/apply-template', {'messages': messages})['prompt']
        return self.post('/tokenize', {'content': text, 'add_special': True, 'parse_special': True})['tokens']

    def complete(self, ids, n, n_vocab):
        "(log-probabilities of the whole vocabulary after `ids`, the at most `n` tokens llama.cpp then picks greedily, up to its end-of-generation token)."
        def steps(n, n_probs):
            r = self.server.handle_completions({'prompt': ids, 'max_tokens': n, 'temperature': 0, 'n_probs': n_probs,
                                                'post_sampling_probs': False, 'cache_prompt': False})
            assert 'choices' in r, r
            return r['choices'][0]['logprobs']['content']
        lp = np.full(n_vocab, -np.inf, np.float32)
        for e in steps(1, n_vocab)[0]['top_logprobs']: lp[e['id']] = e['logprob']
        return lp, [e['id'] for e in steps(n, 1)]  # the whole vocabulary at each of n steps would be MBs of JSON

    def chat(self, messages, n):
        "llama.cpp's greedy answer of at most `n` tokens to `messages`, through its chat-completions route."
        r = self.server.handle_chat_completions({'messages': messages, 'max_tokens': n, 'temperature': 0, 'cache_prompt': False})
        assert 'choices' in r, r
        return r['choices'][0]['message']['content']


def logit_error(logprobs, logits):
    """Largest |difference| / largest |logit| between llama.cpp's log-probabilities (logits up to a constant) and transformers'
    logits, over the tokens whose probability float32 does not round to 0 (all of them, on these models)."""
    ok = np.isfinite(logprobs)
    assert ok.mean() > 0.99, f'{(~ok).sum()} of {ok.size} log-probabilities are -inf'
    shifted = logprobs[ok] - logprobs[ok].mean() + logits[ok].mean()
    return float(np.abs(shifted - logits[ok]).max() / np.abs(logits).max())


# --- the real model -------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def real(tmp_path_factory):
    """SmolLM2-135M-Instruct with a random LoRA adapter on every linear layer (small enough that the model still answers
    sensibly, large enough that the merge changes its logits), merged (float32, to compare exactly) and exported to f16
    and q8_0 through the CLI; then transformers' reference on each chat: logits of the first answer token, greedy answer.
    A random adapter rather than a few QLoRA steps: one NF4 training step of this model takes minutes on 2 CPU cores."""
    import torch, transformers
    from qlora_nb.builtin import resolve_model_path
    tmp = tmp_path_factory.mktemp('real')
    base = resolve_model_path(REAL)
    pm = _adapter(base, tmp/'run', b_std=0.02)
    cfg = _config(tmp, tmp/'run', base=REAL, merge_dtype='float32', gguf_types=['f16', 'q8_0'])
    code, out, err = run('merge', str(cfg))
    assert code == 0, err
    assert '210 LoRA updates' in out
    code, out, err = run('export', str(cfg))
    assert code == 0, err
    mdir = tmp/'run'/'merged'
    tok = transformers.AutoTokenizer.from_pretrained(mdir)
    merged = transformers.AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
    refs = []
    with torch.no_grad():
        for i,m in enumerate(CHATS):
            x = torch.tensor([_chat_ids(tok, m)])
            g = merged.generate(x, max_new_tokens=N_ANSWER, do_sample=False, output_logits=True, return_dict_in_generate=True)
            r = dict(messages=m, ids=x[0].tolist(), logits=g.logits[0][0].numpy(), greedy=g.sequences[0, x.shape[1]:].tolist())
            if i < 2:  # peft on the unmerged base, with and without the adapter
                r['peft'] = pm(x).logits[0, -1].numpy()
                with pm.disable_adapter(): r['base'] = pm(x).logits[0, -1].numpy()
            refs.append(r)
    return dict(tmp=tmp, cfg=cfg, mdir=mdir, gguf=tmp/'run'/'gguf', tok=tok, refs=refs, n_vocab=merged.config.vocab_size)


@pytest.fixture(scope='module')
def f16_back(real):
    "The f16 file read back with the gguf package: (metadata, tensors)."
    from qlora_nb.export import read_gguf
    return read_gguf(real['gguf']/'run-f16.gguf')


@pytest.fixture(scope='module')
def llama(real):
    "llama.cpp on each exported file of the real model."
    return {k: LlamaCpp(real['gguf']/f'run-{k}.gguf') for k in TOL}


def test_real_merge_is_base_plus_adapter(real):
    "The merged model's logits are those of peft applying the adapter to the unmerged base, and the adapter matters."
    for r in real['refs'][:2]:
        scale = np.abs(r['peft']).max()
        assert np.abs(r['logits'] - r['peft']).max() / scale < 1e-4
        assert np.abs(r['base'] - r['peft']).max() / scale > 0.02  # the adapter moves the logits (measured 3-8%) beyond the f16 tolerance below
    files = sorted(p.name for p in real['gguf'].iterdir())
    assert files == ['Modelfile', 'run-f16.gguf', 'run-q8_0.gguf']
    assert 'FROM ./run-f16.gguf' in (real['gguf']/'Modelfile').read_text()


def test_real_gguf_metadata(real, f16_back):
    "The f16 file's metadata: architecture, hyperparameters, the whole vocabulary, special ids, chat template."
    import gguf, transformers
    meta, _ = f16_back
    cfg, tok = transformers.AutoConfig.from_pretrained(real['mdir']), real['tok']
    assert meta['general.architecture'] == 'llama' and meta['general.file_type'] == gguf.LlamaFileType.MOSTLY_F16
    assert {k: meta[f'llama.{k}'] for k in ('block_count', 'embedding_length', 'feed_forward_length', 'attention.head_count',
                                            'attention.head_count_kv', 'context_length', 'rope.dimension_count')} == {
        'block_count': 30, 'embedding_length': 576, 'feed_forward_length': 1536, 'attention.head_count': 9,
        'attention.head_count_kv': 3, 'context_length': cfg.max_position_embeddings, 'rope.dimension_count': 64}
    assert meta['llama.rope.freq_base'] == cfg.rope_parameters['rope_theta']
    assert meta['tokenizer.ggml.model'] == 'gpt2' and meta['tokenizer.ggml.pre'] == 'smollm'
    toks = meta['tokenizer.ggml.tokens']
    assert len(toks) == cfg.vocab_size == 49152 and all(toks[i] == t for t,i in tok.get_vocab().items())
    assert (meta['tokenizer.ggml.eos_token_id'], meta['tokenizer.ggml.bos_token_id'], meta['tokenizer.ggml.padding_token_id']) == \
           (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (2, 1, 2)
    assert meta['tokenizer.chat_template'] == tok.chat_template and 'You are a helpful AI assistant named SmolLM' in tok.chat_template


def test_real_gguf_tensors(real, f16_back):
    "Every weight of the merged model is in the f16 file under its GGUF name, equal to it within f16 rounding (tied head: no output.weight)."
    import transformers
    from safetensors.torch import load_file
    from qlora_nb.export import tensor_plan, gguf_data
    import gguf
    _, back = f16_back
    cfg, sd = transformers.AutoConfig.from_pretrained(real['mdir']), load_file(real['mdir']/'model.safetensors')
    plan = tensor_plan(real['mdir'], cfg, 'llama', 'f16')
    assert len(back) == len(plan) == len(sd) == 272 and 'output.weight' not in back
    for k,n,_,_ in plan:
        assert np.allclose(back[n], gguf_data(sd[k], k, cfg, 'llama', gguf.GGMLQuantizationType.F32), rtol=2**-11, atol=2**-24), k


@pytest.mark.llamacpp
def test_builtin_tokenizer_is_the_packaged_files(real):
    "Our converted SmolLM2 tokenizer splits text as llama.cpp does on the original packaged GGUF (digits one by one: `smollm`)."
    from qlora_nb.builtin import packaged_gguf
    ref = LlamaCpp(packaged_gguf())
    texts = ['In 2024, 1234567 + 89 = 1234656.', 'Hello  world\n\n  é 日本 <|im_end|> 3.14', "it's 10:30 -- ok?"]
    for t in texts:
        assert real['tok'](t, add_special_tokens=False)['input_ids'] == ref.post('/tokenize', {'content': t, 'parse_special': True})['tokens'], t


@pytest.mark.llamacpp
def test_real_llamacpp_tokenizes_chats(real, llama):
    "llama.cpp renders the chats with the GGUF's chat template and tokenizes them into exactly transformers' ids."
    for r in real['refs']:
        assert llama['f16'].chat_ids(r['messages']) == r['ids'], r['messages']


@pytest.mark.llamacpp
def test_real_llamacpp_logits_and_greedy(real, llama):
    "llama.cpp's next-token distribution is transformers' within TOL, and its greedy tokens are transformers' (f16; q8_0 may differ)."
    for kind, lc in llama.items():
        for r in real['refs']:
            lp, greedy = lc.complete(r['ids'], N_ANSWER, real['n_vocab'])
            err = logit_error(lp, r['logits'])
            print(f'{kind} {r["messages"][-1]["content"]!r}: max |diff|/max|logit| = {err:.4f}, greedy {greedy} vs {r["greedy"]}')
            assert err < TOL[kind]
            if kind == 'f16': assert greedy == r['greedy'] and lp.argmax() == r['logits'].argmax()


@pytest.mark.llamacpp
def test_real_llamacpp_chat_answer(real, llama):
    "Through llama.cpp's chat route (its own template rendering), the f16 file answers each chat as transformers does."
    for r in real['refs']:
        assert llama['f16'].chat(r['messages'], N_ANSWER) == real['tok'].decode(r['greedy'], skip_special_tokens=True)


def test_cli_bad_input(real, tmp_path):
    code, _, err = run('merge', str(real['cfg']))
    assert code == 1 and 'already exists' in err and 'output.overwrite' in err
    code, _, err = run('export', str(real['cfg']), '--gguf', 'q4_k')
    assert code == 2 and 'output.gguf_types' in err
    code, _, err = run('merge', str(_config(tmp_path, tmp_path/'nothing')))
    assert code == 1 and 'adapter folder not found' in err
    code, _, err = run('export', str(_config(tmp_path, tmp_path/'nothing')))
    assert code == 1 and 'qlora-nb merge' in err


# --- tiny models: other architectures and rotary scalings ------------------------------------------------------------

def test_cli_script_dequantized(tmp_path):
    "The installed `qlora-nb` script, dequantized mode, bf16 weights and a GGUF in bf16 (tiny Llama)."
    from qlora_nb.tiny import build_tiny
    _adapter(build_tiny('tiny-llama'), tmp_path/'run')
    cfg = _config(tmp_path, tmp_path/'run')
    r = qlora_nb_cli('merge', cfg, '--mode', 'dequantized', '--out', tmp_path/'deq', '--set', 'output.merge_dtype=bfloat16')
    assert r.returncode == 0, r.stderr
    assert '28 weights dequantized' in r.stdout
    r = qlora_nb_cli('export', cfg, '--gguf', 'bf16', '--out', tmp_path/'g', '--set', f'output.merged_dir={tmp_path/"deq"}')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'g'/'run-bf16.gguf').exists()


def _rope3(tmp_path):
    "The tiny Llama with Llama 3.1's rotary scaling (a short original context, so that it matters on short prompts)."
    from qlora_nb.tiny import build_tiny
    base = tmp_path/'tiny-llama-rope3'
    shutil.copytree(build_tiny('tiny-llama'), base)
    cfg = json.loads((base/'config.json').read_text())
    cfg['rope_parameters'] = {'rope_type': 'llama3', 'rope_theta': 10000.0, 'factor': 8.0, 'low_freq_factor': 1.0,
                              'high_freq_factor': 4.0, 'original_max_position_embeddings': 64}
    (base/'config.json').write_text(json.dumps(cfg))
    return base


@pytest.mark.llamacpp
@pytest.mark.parametrize('family', ['tiny-llama', 'tiny-qwen', 'tiny-llama-rope3'])
def test_llamacpp_tiny(tmp_path, family):
    "llama.cpp tokenizes the chats as transformers does and runs the f16 and q8_0 files: same top token, logits within tolerance."
    import torch, transformers
    from qlora_nb.tiny import build_tiny
    from qlora_nb.merge import merge_adapter
    from qlora_nb.export import export_gguf
    _xllamacpp()
    base = _rope3(tmp_path) if family == 'tiny-llama-rope3' else build_tiny(family)
    _adapter(base, tmp_path/'adapter')
    mdir = merge_adapter(base, tmp_path/'adapter', tmp_path/'merged', dtype='float32').path
    res = export_gguf(mdir, tmp_path/'gguf', ['f16', 'q8_0'], name=family)
    model, tok = transformers.AutoModelForCausalLM.from_pretrained(mdir), transformers.AutoTokenizer.from_pretrained(mdir)
    # f16: well below the 1.3% that ignoring Llama 3.1 rope scaling costs here; q8_0 measured up to 4%
    for kind, tol in (('f16', 0.005), ('q8_0', 0.06)):
        lc = LlamaCpp(res.files[kind])
        for m in CHATS[:3]:
            ids = _chat_ids(tok, m)
            if kind == 'f16': assert lc.chat_ids(m) == ids
            with torch.no_grad(): ref = model(torch.tensor([ids])).logits[0, -1].numpy()
            lp, _ = lc.complete(ids, 1, model.config.vocab_size)
            err = logit_error(lp, ref)
            print(f'{family} {kind} {m[-1]["content"]!r}: top {lp.argmax()} vs {ref.argmax()}, max |diff|/max|logit| = {err:.4f}')
            assert lp.argmax() == ref.argmax() and err < tol
