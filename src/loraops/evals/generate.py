"""Batched greedy generation and scoring passes shared by the domain and general tasks.

Prompts are encoded the way the trainer encodes them (`data.tokenize`: no special tokens added by
the tokenizer, BOS prepended unless the text already starts with it), so an adapter is evaluated
on exactly the inputs it learned from. Batches are left-padded so every row's next token is at
the last position; greedy decoding on CPU in fp32 makes the outputs deterministic.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from loraops.lora import lora_modules
from loraops.lora.inject import set_submodule

Progress = Callable[[int], None]  # called with the number of items just finished


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    bos = tokenizer.bos_token_id
    return [bos, *ids] if bos is not None and (not ids or ids[0] != bos) else ids


def stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """EOS of the tokenizer plus those of the model's generation config (Gemma also stops at <end_of_turn>)."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return sorted(i for i in ids if i is not None)


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids, attention_mask: [batch, longest]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8,
             max_prompt_tokens: int | None = None, on_batch: Progress | None = None,
             grammar: Any | None = None) -> list[str]:
    """Greedy completions of `prompts`, in order. Prompts are batched by length (fewer pads, and the
    batching does not depend on the order they came in); a prompt longer than `max_prompt_tokens`
    keeps its last tokens after BOS, as the trainer truncates. With `grammar` (a compiled JSON schema,
    `constrained.compile_schema`) every row is decoded under it, closing its JSON within
    `max_new_tokens` whenever the schema's shortest answer fits (`serve.grammar.RowConstraint`)."""
    from transformers import GenerationConfig, LogitsProcessorList

    from loraops.evals.constrained import SchemaLogits

    stops = stop_ids(model, tokenizer)
    pad = pad_id(tokenizer)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad,
                              eos_token_id=stops)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if max_prompt_tokens is not None:
        keep = max_prompt_tokens - 1
        encoded = [e if len(e) <= max_prompt_tokens else e[:1] + e[len(e) - keep:] for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], pad)
        processors = LogitsProcessorList()
        if grammar is not None:
            # one fresh grammar state per row of this batch; logits are [rows, config.vocab_size]
            processors.append(SchemaLogits(grammar, tokenizer, model.config.vocab_size, len(idx), ids.shape[1],
                                           stops, max_new_tokens))
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                             logits_processor=processors)
        for row, i in zip(out[:, ids.shape[1]:].tolist(), idx):  # new tokens only
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            outputs[i] = tokenizer.decode(row[:cut], skip_special_tokens=True)
        if on_batch:
            on_batch(len(idx))
    return outputs


@contextmanager
def adapter_disabled(model: nn.Module, base_params: dict[str, torch.Tensor] | None = None) -> Iterator[nn.Module]:
    """Inside the block `model` is exactly its base: each LoRALinear is swapped for the module it
    wraps (not merely scaled by 0, which would leave DoRA's rescaling in), and parameters the
    adapter replaced (`modules_to_save`) get their base values from `base_params` back. One model
    in memory serves both sides of every comparison."""
    layers = lora_modules(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    swapped = {name: params[name].data for name in base_params or {}}
    for path, layer in layers.items():
        set_submodule(model, path, layer.base)
    for name, tensor in (base_params or {}).items():
        params[name].data = tensor
    try:
        yield model
    finally:
        for path, layer in layers.items():
            set_submodule(model, path, layer)
        for name, tensor in swapped.items():
            params[name].data = tensor
