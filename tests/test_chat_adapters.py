"Chat over several adapters on the real SmolLM2-135M-Instruct (4-bit): each side answers as that adapter loaded alone."

Q = 'What is the capital of France?'


def _run(tmp_path, name, seed):
    "A run folder (adapter, tokenizer, qlora_nb.yaml) with a random LoRA adapter: cheaper than training one."
    import peft, torch, transformers
    from qlora_nb.builtin import resolve_model_path
    from qlora_nb.config import Config, save_config
    base = resolve_model_path('builtin:smollm2-135m')
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules='all-linear', init_lora_weights=False)
    pm = peft.get_peft_model(m, lora)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if 'lora_B' in n: p.normal_(0, 0.05)
    out = tmp_path/name
    pm.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(base).save_pretrained(out)
    c = Config(); c.model.base_model = 'builtin:smollm2-135m'; c.output.output_dir = str(out)
    save_config(c, out/'qlora_nb.yaml')
    return out


def test_compare_answers_with_each_adapter(tmp_path):
    from qlora_nb.chat import load_chat_model
    sft, dpo = _run(tmp_path, 'sft', 0), _run(tmp_path, 'dpo', 1)
    q = dict(temperature=0, max_new_tokens=8)
    h = {}
    both = load_chat_model(dpo, adapters={'sft': sft}, name='dpo').compare(Q, histories=h, **q)
    alone = {s: load_chat_model(r) for s, r in (('sft', sft), ('dpo', dpo))}
    want = {'base': alone['sft'].answer(Q, base=True, **q), 'dpo': alone['dpo'].answer(Q, **q),
            'sft': alone['sft'].answer(Q, **q)}
    assert both == want
    assert want['sft'] != want['dpo'], want  # the two adapters answer differently, so the check above tells them apart
    assert [m['content'] for m in h['sft']] == [Q, want['sft']]
