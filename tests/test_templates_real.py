"Our built-in chat templates render exactly like each family's real template (llama.cpp's copies) or its documented format."
import pytest
from transformers.utils.chat_template_utils import _compile_jinja_template
from qlora_nb.config import Config
from qlora_nb.templates import (TEMPLATE_ALIASES, builtin_template, template_problem, template_name,
                                template_family, template_label, resolve_template, template_from_setting)
from conftest import qlora_nb_cli

S = {'role': 'system', 'content': 'You are a terse assistant.'}
U1 = {'role': 'user', 'content': 'What is the capital of France?'}
A1 = {'role': 'assistant', 'content': 'Paris.'}
U2 = {'role': 'user', 'content': '  And of Spain?\n'}
A2 = {'role': 'assistant', 'content': '\nMadrid. \n'}
TOOLS = [{'type': 'function', 'function': {'name': 'get_weather', 'description': 'Weather in a city',
          'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city']}}}]
CALL = {'role': 'assistant', 'content': '', 'tool_calls': [{'id': 'call12345', 'type': 'function',
        'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}]}
RESULT = {'role': 'tool', 'tool_call_id': 'call12345', 'name': 'get_weather', 'content': '{"temp": 21}'}
A3 = {'role': 'assistant', 'content': 'It is 21 degrees in Paris.'}
R1 = {'role': 'assistant', 'content': 'Paris.', 'reasoning_content': 'The user asks about France.'}
R2 = {'role': 'assistant', 'content': '<think>\nSpain: Madrid.\n</think>\n\nMadrid.'}
CHATS = {'system, two turns': [S, U1, A1, U2, A2], 'no system': [U1, A1], 'system, to answer': [S, U1],
         'to answer': [U1], 'two turns': [U1, A1, U2, A2]}
TOOL_CHATS = {'tool call and result': [S, U1, CALL, RESULT, A3], 'after a result': [U1, CALL, RESULT], 'tools offered': [U1, A1]}
THINK_CHATS = {'reasoning_content': [U1, R1, U2, R2], 'think in content': [S, U1, R2], 'reasoning, to answer': [U1, R1, U2]}

# name -> (reference file, the family tokenizer's variables, tools?, reasoning?, extra template variables to try)
LLAMA = dict(bos_token='<|begin_of_text|>', eos_token='<|eot_id|>')
REFERENCED = {
    'qwen_25': ('Qwen-Qwen2.5-7B-Instruct', dict(eos_token='<|im_end|>'), True, False, ()),
    'qwen3': ('Qwen-Qwen3-0.6B', dict(eos_token='<|im_end|>'), True, True, ({'enable_thinking': False},)),
    'qwen3_5': ('Qwen3.5-4B', dict(eos_token='<|im_end|>'), True, True, ({'enable_thinking': False},)),
    'llama3.1': ('meta-llama-Llama-3.1-8B-Instruct', LLAMA, True, False, ({'tools_in_user_message': False}, {'date_string': '1 Jan 2025'})),
    'llama3.3': ('meta-llama-Llama-3.3-70B-Instruct', LLAMA, True, False, ({'tools_in_user_message': False},)),
    'llama3.2': ('meta-llama-Llama-3.2-3B-Instruct', LLAMA, True, False, ({'tools_in_user_message': False}, {'date_string': '1 Jan 2025'})),
    'gemma': ('google-gemma-2-2b-it', dict(bos_token='<bos>', eos_token='<eos>'), False, False, ()),
    'phi_35': ('microsoft-Phi-3.5-mini-instruct', dict(bos_token='<s>', eos_token='<|endoftext|>'), False, False, ()),
    'phi_3': ('microsoft-Phi-3.5-mini-instruct', dict(bos_token='<s>', eos_token='<|endoftext|>'), False, False, ()),
    'mistral_v3_tekken': ('mistralai-Mistral-Nemo-Instruct-2407', dict(bos_token='<s>', eos_token='</s>'), True, False, ()),
    'gemma4': ('google-gemma-4-31B-it', dict(bos_token='<bos>', eos_token='<eos>'), False, True, ({'enable_thinking': True},)),
    'gemma4_unified': ('google-gemma-4-31B-it-interleaved', dict(bos_token='<bos>', eos_token='<eos>'), False, True, ({'enable_thinking': True},)),
}

def render(template, messages, **kw):
    "Rendered text, or the error, through transformers' own Jinja sandbox (the one `apply_chat_template` uses)."
    try: return _compile_jinja_template(template).render(messages=messages, **kw)
    except Exception as e: return f'error: {e}'

def cases(tools, think, extra):
    chats = [(m, None) for m in CHATS.values()] + ([(m, TOOLS) for m in TOOL_CHATS.values()] if tools else [])
    chats += [(m, None) for m in THINK_CHATS.values()] if think else []
    for m, t in chats:
        for gp in (False, True):
            for kw in ({},) + extra: yield m, dict(kw, add_generation_prompt=gp, **({'tools': t} if t else {}))

@pytest.mark.parametrize('name', REFERENCED)
def test_same_as_real_template(name, real_templates):
    ref, variables, tools, think, extra = REFERENCED[name]
    ours, real, n = builtin_template(name), real_templates[ref], 0
    for messages, kw in cases(tools, think, extra):
        want = render(real, messages, **variables, **kw)
        got = render(ours, messages, **variables, **kw)
        if want.startswith('error'): assert got.startswith('error'), (messages, kw, got)
        else: assert got == want, (messages, kw); n += 1
    assert n >= 6  # most conversations render (not just fail the same way)

def test_gemma4_drops_thought_channels(real_templates):
    "An answer's `<|channel>thought ...<channel|>` is not written back into history, as in Gemma 4's own template."
    chat = [U1, {'role': 'assistant', 'content': '<|channel>thought\nFrance.<channel|>Paris.'}, U2]
    for gp in (False, True):
        want = render(real_templates['google-gemma-4-31B-it'], chat, bos_token='<bos>', add_generation_prompt=gp)
        assert render(builtin_template('gemma4'), chat, bos_token='<bos>', add_generation_prompt=gp) == want and 'France.' not in want

def test_command_a_is_command_r7b_format(real_templates):
    """Command A's default template is Command R7B's format (llama.cpp has R7B's): the same preamble, developer preamble and
    turns, but a blank line before `# Default Preamble` and `<|START_RESPONSE|>` in the generation prompt (R7B's
    empty thinking block is off with `enable_thinking`)."""
    r7b, n = real_templates['CohereForAI-c4ai-command-r7b-12-2024-tool_use'], 0
    for messages, kw in cases(False, True, ()):
        want = render(r7b, messages, bos_token='<BOS_TOKEN>', enable_thinking=True, **kw).replace('languages.\n# Default', 'languages.\n\n# Default')
        want += '<|START_RESPONSE|>' if kw['add_generation_prompt'] else ''
        assert render(builtin_template('command_a'), messages, bos_token='<BOS_TOKEN>', **kw) == want, (messages, kw); n += 1
    assert n == 16
    strict = render(builtin_template('command_a'), [U1], bos_token='', safety_mode='strict')
    assert '# System Preamble\nYou are in strict safety mode.' in strict and 'contextual' not in strict

B, E = '<s>', '</s>'
DOCUMENTED = {  # name -> the documented text of [S, U1, A1, U2, A2] (BOS <s>, EOS </s>)
    'llama3': '<s><|start_header_id|>system<|end_header_id|>\n\nYou are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd of Spain?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nMadrid.<|eot_id|>',
    'llama4': '<s><|header_start|>system<|header_end|>\n\nYou are a terse assistant.<|eot|><|header_start|>user<|header_end|>\n\nWhat is the capital of France?<|eot|><|header_start|>assistant<|header_end|>\n\nParis.<|eot|><|header_start|>user<|header_end|>\n\nAnd of Spain?<|eot|><|header_start|>assistant<|header_end|>\n\nMadrid.<|eot|>',
    'gemma3': '<s><start_of_turn>user\nYou are a terse assistant.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n<start_of_turn>user\nAnd of Spain?<end_of_turn>\n<start_of_turn>model\nMadrid.<end_of_turn>\n',
    'phi_4': '<|im_start|>system<|im_sep|>You are a terse assistant.<|im_end|><|im_start|>user<|im_sep|>What is the capital of France?<|im_end|><|im_start|>assistant<|im_sep|>Paris.<|im_end|><|im_start|>user<|im_sep|>  And of Spain?\n<|im_end|><|im_start|>assistant<|im_sep|>\nMadrid. \n<|im_end|>',
    'mistral_v1': '<s> [INST] You are a terse assistant.\n\nWhat is the capital of France? [/INST] Paris.</s> [INST]   And of Spain?\n [/INST] \nMadrid. \n</s>',
    'mistral_v2v3': '<s>[INST] What is the capital of France?[/INST] Paris.</s>[INST] You are a terse assistant.\n\n  And of Spain?\n[/INST] Madrid.</s>',
    'deepseek_v2': '<s>You are a terse assistant.\n\n<｜User｜>What is the capital of France?<｜Assistant｜>Paris.</s><｜User｜>  And of Spain?\n<｜Assistant｜>\nMadrid. \n</s>',
    'deepseek_v3': '<s>You are a terse assistant.<｜User｜>What is the capital of France?<｜Assistant｜>Paris.<｜end▁of▁sentence｜><｜User｜>  And of Spain?\n<｜Assistant｜>\nMadrid. \n<｜end▁of▁sentence｜>',
    'cohere': '<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a terse assistant.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>What is the capital of France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>And of Spain?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Madrid.<|END_OF_TURN_TOKEN|>',
    'chatml': '<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\n  And of Spain?\n<|im_end|>\n<|im_start|>assistant\n\nMadrid. \n<|im_end|>\n',
    'exaone': '[|system|]You are a terse assistant.[|endofturn|]\n[|user|]What is the capital of France?\n[|assistant|]Paris.[|endofturn|]\n[|user|]  And of Spain?\n\n[|assistant|]\nMadrid. \n[|endofturn|]\n',
    'metharme': '<s><|system|>You are a terse assistant.<|user|>What is the capital of France?<|model|>Paris.<|user|>And of Spain?<|model|>Madrid.</s>',
    'falcon_h1': '<s><|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\n  And of Spain?\n<|im_end|>\n<|im_start|>assistant\n\nMadrid. \n<|im_end|>\n',
    'jamba': '<|startoftext|><|bom|><|system|> You are a terse assistant.<|eom|><|bom|><|user|> What is the capital of France?<|eom|><|bom|><|assistant|> Paris.<|eom|><|bom|><|user|>   And of Spain?\n<|eom|><|bom|><|assistant|> \nMadrid. \n<|eom|>',
    'exaone4': '[|system|]\nYou are a terse assistant.[|endofturn|]\n[|user|]\nWhat is the capital of France?[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\nParis.[|endofturn|]\n[|user|]\n  And of Spain?\n[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n\nMadrid. \n[|endofturn|]\n',
    'mistral_v7_tekken': '<s>[SYSTEM_PROMPT]You are a terse assistant.[/SYSTEM_PROMPT][INST]What is the capital of France?[/INST]Paris.</s>[INST]  And of Spain?\n[/INST]\nMadrid. \n</s>',
}
DOCUMENTED |= {'gemma3n': DOCUMENTED['gemma3'], 'aya': DOCUMENTED['cohere'], 'nemotron_h': DOCUMENTED['chatml']}

@pytest.mark.parametrize('name', DOCUMENTED)
def test_documented_format(name):
    test_chat = CHATS['system, two turns']
    assert render(builtin_template(name), test_chat, bos_token=B, eos_token=E) == DOCUMENTED[name]

def test_defaults_without_system():
    assert render(builtin_template('exaone'), [U1], add_generation_prompt=True) == '[|system|][|endofturn|]\n[|user|]What is the capital of France?\n[|assistant|]'
    assert render(builtin_template('metharme'), [U1], bos_token=B, eos_token=E, add_generation_prompt=True).startswith('<s><|system|>Enter RP mode.')
    assert '[SYSTEM_PROMPT]You are Mistral Small 3' in render(builtin_template('mistral_v7_tekken'), [U1], bos_token=B, eos_token=E)
    assert render(builtin_template('jamba'), [U1], add_generation_prompt=True) == '<|startoftext|><|bom|><|system|> <|eom|><|bom|><|user|> What is the capital of France?<|eom|><|bom|><|assistant|>'
    ex4 = builtin_template('exaone4')
    assert render(ex4, [U1], add_generation_prompt=True) == '[|user|]\nWhat is the capital of France?[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n'
    assert render(ex4, [U1], add_generation_prompt=True, enable_thinking=True).endswith('[|assistant|]\n<think>\n')
    assert render(ex4, THINK_CHATS['reasoning_content'][:2], skip_think=False).endswith('[|assistant|]\n<think>\nThe user asks about France.\n</think>\n\nParis.[|endofturn|]\n')
    assert render(ex4, [U1, R2, U2, R2], skip_think=False).count('Spain: Madrid.') == 1  # reasoning of the last answer only
    assert render(builtin_template('gemma3'), [U1], bos_token=B, add_generation_prompt=True) == '<s><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n'

AXOLOTL_NAMES = ['alpaca', 'aya', 'chatml', 'cohere', 'command_a', 'command_a_rag', 'command_a_tool_use', 'deepseek_v2', 'deepseek_v3',
                 'exaone', 'exaone4', 'falcon_h1', 'gemma', 'gemma3', 'gemma3n', 'gemma4', 'gemma4_unified', 'jamba', 'llama3',
                 'llama3_2_vision', 'llama4', 'llava', 'metharme', 'mistral_v1', 'mistral_v2v3', 'mistral_v3_tekken', 'mistral_v7_tekken',
                 'nemotron_h', 'phi_3', 'phi_35', 'phi_4', 'pixtral', 'qwen2_vl', 'qwen3', 'qwen3_5', 'qwen_25']  # its templates/ folder

@pytest.mark.parametrize('name', AXOLOTL_NAMES)
def test_every_axolotl_name_resolves_or_says_why(name):
    t, p = builtin_template(name), template_problem(name)
    assert (t is None) == (p is not None)
    if t is None: assert 'text only' in p[0] or 'leave `data.chat_template` empty' in p[1]
    else: assert template_name(t) == TEMPLATE_ALIASES.get(name, name) and template_from_setting(name) == t

def test_config_check_reports_unknown_name(tmp_path):
    (tmp_path/'chat.jsonl').write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    cfg = tmp_path/'c.yaml'
    cfg.write_text(f"model:\n  base_model: builtin:tiny-llama\ndata:\n  chat_template: qwen_2.5\n  datasets:\n    - path: {tmp_path}/chat.jsonl\n")
    r = qlora_nb_cli('config', 'check', cfg)
    assert r.returncode != 0 and 'data.chat_template' in r.stdout + r.stderr and 'did you mean `qwen_25`?' in r.stdout + r.stderr
    cfg.write_text(cfg.read_text().replace('qwen_2.5', 'qwen_25'))
    assert qlora_nb_cli('config', 'check', cfg).returncode == 0

def test_smollm2_is_chatml_with_its_default_system_prompt(monkeypatch):
    from transformers import AutoTokenizer
    from qlora_nb.builtin import resolve_model_path
    tok = AutoTokenizer.from_pretrained(resolve_model_path('builtin:smollm2-135m'))
    tpl = resolve_template(tok, Config())  # `data.chat_template` empty: the tokenizer's own template wins
    assert tpl == tok.chat_template and template_family(tok, tpl) == 'chatml'
    assert template_label(tok, Config()) == "chatml (the tokenizer's own)"  # what `qlora-nb preprocess` prints
    text = tok.apply_chat_template([U1], chat_template=tpl, tokenize=False)
    assert text.startswith('<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n')
