import torch

from loraops.evals.generate import adapter_disabled, encode_prompt, generate, left_pad
from loraops.lora import LoRAConfig, apply_adapter, extract, inject, lora_modules
from tiny import input_ids, tiny_llama, tiny_tokenizer

PROMPTS = ["Hello, how", "The quick brown fox jumps over", "Invoice", "Please route this ticket to billing with"]


def test_prompts_are_encoded_as_the_trainer_encodes_them():
    tok = tiny_tokenizer()
    assert encode_prompt(tok, "Hello")[0] == tok.bos_token_id
    assert encode_prompt(tok, "<bos>Hello").count(tok.bos_token_id) == 1


def test_left_padding_puts_every_prompt_at_the_right_edge():
    ids, mask = left_pad([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_generation_equals_one_prompt_at_a_time():
    model, tok = tiny_llama(), tiny_tokenizer()
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=4)
    single = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=1)
    assert batched == single
    assert generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3) == batched  # deterministic


def test_disabling_the_adapter_gives_exactly_the_base_and_restores_it_after():
    base = tiny_llama()
    ids = input_ids()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    model = tiny_llama()
    inject(model, LoRAConfig(r=4, target_modules="all-linear", init="random", use_dora=True))
    with torch.no_grad():
        adapted_logits = model(input_ids=ids).logits
        with adapter_disabled(model):
            torch.testing.assert_close(model(input_ids=ids).logits, base_logits, rtol=0, atol=0)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted_logits, rtol=0, atol=0)
    assert lora_modules(model)


def test_disabling_restores_base_values_of_saved_modules():
    model = tiny_llama()
    with torch.no_grad():
        base_logits = model(input_ids=input_ids()).logits
    config = LoRAConfig(r=2, target_modules=["q_proj"], init="random", modules_to_save=["lm_head"])
    donor = tiny_llama(seed=3)
    inject(donor, config)
    adapter = extract(donor, config)
    original = {"lm_head.weight": model.lm_head.weight.detach().clone()}
    apply_adapter(model, adapter)
    with torch.no_grad(), adapter_disabled(model, original):
        torch.testing.assert_close(model(input_ids=input_ids()).logits, base_logits, rtol=0, atol=0)
    torch.testing.assert_close(model.lm_head.weight, adapter.saved_modules["lm_head.weight"])
