"""The trained tokens of chat data against a reference that shares none of our span search: real chat templates
(llama.cpp's collection and SmolLM2's own), rendered prefix by prefix with `apply_chat_template` right here."""
import json, os, random
import pytest
from transformers import AutoTokenizer
from qlora_nb.builtin import resolve_model_path
from qlora_nb.config import Config, DatasetConfig
from qlora_nb.data import prepare_data
from qlora_nb.utils import write_jsonl
from qlora_nb.formats import BadRow, to_sample
from qlora_nb.tokenizing import IGNORE, SampleTokenizer, next_turn_end, turn_end

WORDS = 'the capital of France is Paris assistant user <|im_end|> <|im_start|> </s> <|eot_id|> [INST] 12 + 7 = 19 é 日本 🙂'.split()
CALL = {'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}
TOOLS = [{'type': 'function', 'function': {'name': 'get_weather', 'description': 'Weather of a city',
                                           'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}}}}}]
TOOL_CHAT = [{'role': 'user', 'content': 'Weather in Paris?'}, {'role': 'assistant', 'content': '', 'tool_calls': [CALL]},
             {'role': 'tool', 'content': 'SUNNY18', 'name': 'get_weather', 'tool_call_id': 'call0001a'},
             {'role': 'assistant', 'content': 'It is sunny.'}]


@pytest.fixture(scope='module')
def smol():
    return AutoTokenizer.from_pretrained(resolve_model_path('builtin:smollm2-135m'))


def conversation(rng):
    "System or not, 1-4 exchanges, leading/trailing whitespace, special-looking text, repeated answers, non-ASCII."
    def say():
        s = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 10)))
        return rng.choice(['', '', ' ', '\n', '\n\n', '  \n']) + s + rng.choice(['', '', ' ', '\n', '\n\n', ' \n'])
    msgs, answers = ([{'role': 'system', 'content': say()}] if rng.random() < 0.4 else []), []
    for _ in range(rng.randint(1, 4)):
        answers.append(rng.choice(answers) if answers and rng.random() < 0.3 else say())
        msgs += [{'role': 'user', 'content': say()}, {'role': 'assistant', 'content': answers[-1]}]
    return msgs


def reference_labels(tok, msgs, template, tools=None):
    """Labels by rendering prefix by prefix: turn k trains what `msgs[:k+1]` adds to `msgs[:k]` with the generation
    prompt, through the end-of-turn text; None where the whole rendering does not hold turn k at that place."""
    render = lambda m, g=False: tok.apply_chat_template(m, tools=tools, chat_template=template, tokenize=False, add_generation_prompt=g)
    probe = render([{'role': 'user', 'content': 'U'}, {'role': 'assistant', 'content': 'XQXQX'}])
    after = probe[probe.rindex('XQXQX') + 5:]
    end, layout = after.rstrip(), after[len(after.rstrip()):]
    full, spans = render(msgs), []
    for k, m in enumerate(msgs):
        if m['role'] != 'assistant': continue
        before, upto = render(msgs[:k], True), render(msgs[:k+1])
        s = len(os.path.commonprefix([before, upto]))
        if s < len(before) and not (before.startswith(ctx := render(msgs[:k])) and upto.startswith(ctx)): return None  # the context itself differs
        gen = upto[s:]
        gen = gen[:gen.rindex(end) + len(end)] if end and end in gen else gen[:len(gen) - len(layout)] if layout and gen.endswith(layout) else gen
        if not full.startswith(upto[:s] + gen): return None
        spans.append((s, s + len(gen)))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    return enc['input_ids'], [i if any(a < e and b > s for s, e in spans) else IGNORE for i, (a, b) in zip(enc['input_ids'], enc['offset_mapping'])]


def _no_last_end(tok, tpl):
    try: return not turn_end(tok, tpl) and bool(next_turn_end(tok, tpl))
    except BadRow: return False  # the probe itself fails (functionary needs `functions`): the loop skips its rows too


def test_whitespace_and_lookalikes_on_real_templates(smol, real_templates):
    rng, compared, templates = random.Random(0), 0, set()
    for name, tpl in {'smollm2': smol.chat_template, **real_templates}.items():
        if _no_last_end(smol, tpl): continue  # no end after the last answer (Apertus): test_no_end_after_the_last_answer
        st = SampleTokenizer(smol, tpl)
        for _ in range(12):
            msgs = conversation(rng)
            try: ref = reference_labels(smol, msgs, tpl)
            except Exception: continue  # the template refuses this shape (e.g. no system role)
            if ref is None: continue    # not prefix-consistent here: see the Qwen3 and Mistral tests
            (ids, labels), = st([{'messages': msgs}])
            assert (ids, labels) == ref, (name, msgs)
            compared += 1; templates.add(name)
    assert compared > 400 and len(templates) > 40, (compared, len(templates))


def test_old_rule_fails_the_reference(smol):
    "Negative control: training the stripped content and the end token is not what the model generates."
    msgs = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello \n'}]
    ids, labels = reference_labels(smol, msgs, smol.chat_template)
    assert smol.decode([l for l in labels if l != IGNORE]) == 'Hello \n<|im_end|>'
    text = smol.apply_chat_template(msgs, tokenize=False)
    assert 'Hello<|im_end|>' not in text  # the old search's needle: the row was refused
    assert SampleTokenizer(smol)([{'messages': msgs}])[0] == (ids, labels)


def test_qwen3_history_and_last_turn(smol, real_templates):
    "Qwen3 writes earlier answers without the think block it gives the last: each trained as the conversation writes it."
    msgs = [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'Same.\n'}, {'role': 'user', 'content': 'b'}, {'role': 'assistant', 'content': 'Same.\n'}]
    (ids, labels), = SampleTokenizer(smol, real_templates['Qwen-Qwen3-0.6B'])([{'messages': msgs}])
    runs = [smol.decode(r) for r in _runs(labels)]
    assert runs == ['Same.\n<|im_end|>', '<think>\n\n</think>\n\nSame.\n<|im_end|>'], runs


def test_moved_system_prompt(smol, real_templates):
    "Mistral Nemo writes the system prompt only into a last user turn: the prompt's context differs from the conversation's."
    tpl = real_templates['mistralai-Mistral-Nemo-Instruct-2407']
    msgs = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'A.'},
            {'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'A.'}]
    (ids, labels), = SampleTokenizer(smol, tpl)([{'messages': msgs}])
    assert [smol.decode(r) for r in _runs(labels)] == ['A.<|im_end|>'] * 2
    assert 'Be brief.' in smol.apply_chat_template(msgs[:2], chat_template=tpl, tokenize=False, add_generation_prompt=True)


def _runs(labels):
    runs, cur = [], []
    for l in labels + [IGNORE]:
        if l != IGNORE: cur.append(l)
        elif cur: runs.append(cur); cur = []
    return runs


HERMES = ['NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use', 'NousResearch-Hermes-3-Llama-3.1-8B-tool_use']

@pytest.mark.parametrize('name', ['Qwen-Qwen2.5-7B-Instruct', 'meta-llama-Llama-3.1-8B-Instruct',
                                  'Qwen-Qwen3-0.6B', *HERMES])
def test_tool_calls_trained_results_not(smol, real_templates, name):
    tpl = real_templates[name]
    (ids, labels), = SampleTokenizer(smol, tpl)([{'messages': TOOL_CHAT, 'tools': TOOLS}])
    trained = smol.decode([l for l in labels if l != IGNORE])
    assert 'get_weather' in trained and 'Paris' in trained and 'It is sunny.' in trained and 'SUNNY18' not in trained, trained
    ref = reference_labels(smol, TOOL_CHAT, tpl, TOOLS)
    if ref is not None: assert (ids, labels) == ref
    if name in HERMES:  # its last tool turn is written otherwise before a generation prompt: no prefix reference, so the exact runs
        assert _runs_text(smol, labels) == ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', 'It is sunny.<|im_end|>']


@pytest.mark.parametrize('name', HERMES)
def test_end_of_turn_of_a_template_that_needs_tools(smol, real_templates, name):
    "Hermes' tool_use templates render nothing without `tools`: the end-of-turn probes pass a dummy tool."
    from qlora_nb.templates import ends_turn
    from qlora_nb.tokenizing import turn_end
    tpl = real_templates[name]
    with pytest.raises(TypeError): smol.apply_chat_template([{'role': 'user', 'content': 'U'}], chat_template=tpl, tokenize=False)
    assert turn_end(smol, tpl) == '<|im_end|>' and ends_turn(smol, tpl) == {'<|im_end|>'}


def _runs_text(tok, labels): return [tok.decode(r) for r in _runs(labels)]


@pytest.mark.parametrize('name', [None, 'HuggingFaceTB-SmolLM3-3B', 'ibm-granite-granite-3.3-2B-Instruct'])
def test_tool_calls_without_tool_support(smol, real_templates, name):
    "SmolLM2's ChatML ignores tool_calls, and so do SmolLM3's and Granite 3.3's (they read `tools`, not the calls): a clear bad row, not an empty turn trained."
    with pytest.raises(BadRow, match=r"`messages\[1\]` \(assistant\) has a tool call, but the chat template does not write it.*tool support"):
        SampleTokenizer(smol, real_templates[name] if name else None)([{'messages': TOOL_CHAT, 'tools': TOOLS}])


def test_sharegpt_tools_through_the_pipeline(smol, real_templates, tmp_path):
    "LLaMA-Factory's ShareGPT layout (function_call, observation, a tools JSON column), counted row by row."
    row = {'conversations': [{'from': 'human', 'value': 'Weather in Paris?'}, {'from': 'function_call', 'value': json.dumps({'name': 'get_weather', 'arguments': {'city': 'Paris'}})},
                             {'from': 'observation', 'value': 'SUNNY18'}, {'from': 'gpt', 'value': 'It is sunny.\n'}], 'tools': json.dumps([TOOLS[0]['function']])}
    image = {'conversations': [{'from': 'human', 'value': [{'type': 'image', 'image': 'x.png'}]}, {'from': 'gpt', 'value': 'A cat.'}]}
    parts = {'conversations': [{'from': 'human', 'value': [{'type': 'text', 'text': 'Hi '}, {'type': 'text', 'value': 'there'}]}, {'from': 'gpt', 'value': [{'type': 'text', 'text': '\nHello!\n'}]}]}
    assert to_sample(row, 'sharegpt', DatasetConfig())['tools'][0]['function']['name'] == 'get_weather'
    c = Config(); c.data.on_bad_rows = 'skip'; c.data.chat_template = real_templates['Qwen-Qwen2.5-7B-Instruct']; c.data.shuffle = False
    c.data.datasets = [DatasetConfig(path=write_jsonl(tmp_path/'tools.jsonl', [row, image, parts]))]
    pd = prepare_data(c, smol, cache=False)
    r = pd.report.datasets[0]
    assert (r.rows_in, r.kept, r.dropped) == (3, 2, {'invalid': 1}), r
    assert "`conversations[0].value[0]` is a 'image' part: only text content is supported" in r.examples['invalid'][0]
    trained = [smol.decode([l for l in x if l != IGNORE]) for x in pd.train['labels']]
    assert 'get_weather' in trained[0] and 'SUNNY18' not in trained[0] and trained[0].endswith('It is sunny.\n<|im_end|>'), trained[0]
    assert trained[1] == '\nHello!\n<|im_end|>'


NO_LAST_END = {'Apertus-8B-Instruct': '<|assistant_end|>', 'Apriel-1.6-15b-Thinker-fixed': '\n<|end|>'}

@pytest.mark.parametrize('name', NO_LAST_END)
def test_no_end_after_the_last_answer(smol, real_templates, name):
    """Apertus writes `<|assistant_end|>` (Apriel `\\n<|end|>`) after an answer that another turn follows, nothing after the
    last: every answer is trained through it (the last one gets it appended), against a prefix-by-prefix reference that
    renders each answer with a user turn after it and cuts after the end token."""
    from qlora_nb.tokenizing import reference_trained_turns, next_turn_end
    tpl, rng, n, end = real_templates[name], random.Random(1), 0, NO_LAST_END[name]
    assert next_turn_end(smol, tpl) == end
    st = SampleTokenizer(smol, tpl)
    for _ in range(20):
        msgs = conversation(rng)
        (ids, labels), = st([{'messages': msgs}])
        want = reference_trained_turns(smol, msgs, tpl, stop=end.strip())
        text = smol.apply_chat_template(msgs, chat_template=tpl, tokenize=False)
        assert ids == smol(text + end, add_special_tokens=False)['input_ids']  # the last answer's stop added
        runs = _runs_text(smol, labels)
        # SmolLM2 does not know Apertus' markers: a token of it may span a marker's `>` or `<` and the answer (no half tokens)
        assert len(runs) == len(want) and all(w in r and len(r) - len(w) <= 2 for r, w in zip(runs, want)), (runs, want)
        n += 1
    assert n == 20
