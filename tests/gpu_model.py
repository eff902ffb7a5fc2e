"The GPU tests' shared model: a Llama-shaped random model in NF4 + double quantization, bf16 compute, LoRA on every linear layer."
import torch


def llama_lora_model(tmp_path, num_hidden_layers=4, **lora):  # `lora`: settings of the `lora` section, e.g. alpha=32
    "The model saved to `tmp_path`, loaded as qlora_nb loads a base, with adapters whose B is not zero (so they count)."
    import transformers
    from qlora_nb.config import Config
    from qlora_nb.model import load_model
    from qlora_nb.lora import attach_lora
    from qlora_nb.tiny import build_tiny
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=1024, intermediate_size=3584, num_hidden_layers=num_hidden_layers,
                                   num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)
    transformers.AutoTokenizer.from_pretrained(build_tiny('tiny-llama')).save_pretrained(tmp_path)
    c = Config(); c.model.base_model = str(tmp_path); c.lora.dropout = 0.0
    for k, v in lora.items(): setattr(c.lora, k, v)
    model, _ = load_model(c)
    model = attach_lora(model, c)
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.02)
    return model


def loss_and_grads(model, batch):
    "The loss of one bf16-autocast forward and backward on `batch`, and every trainable parameter's gradient in float32."
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    torch.cuda.synchronize()
    return loss.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
