"`default_system_prompt` on real chat templates: it finds the ones that add a system prompt, and only those."
import pytest
from transformers import AutoTokenizer
from qlora_nb.preview import default_system_prompt
from qlora_nb.tiny import build_tiny


@pytest.fixture(scope='module')
def tok(): return AutoTokenizer.from_pretrained(build_tiny('tiny-llama'))


@pytest.mark.parametrize('name, starts', [
    ('Qwen-Qwen2.5-7B-Instruct', 'You are Qwen, created by Alibaba Cloud.'),
    ('HuggingFaceTB-SmolLM3-3B', 'You are a helpful AI assistant named SmolLM'),
    ('meta-llama-Llama-3.1-8B-Instruct', None),  # a date header, but no prompt of its own
    ('google-gemma-2-2b-it', None),  # no system turn: a system prompt goes into the first user turn
    ('Qwen-Qwen3-0.6B', None),
])
def test_default_system_prompt(real_templates, tok, name, starts):
    d = default_system_prompt(tok, real_templates[name])
    assert d == starts if starts is None else d.startswith(starts), d
