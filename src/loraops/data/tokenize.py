"""Curated records → token ids and labels for training, and packing of several examples per row.

Labels are aligned with input_ids (the model shifts them): labels[t] = input_ids[t] where the loss
counts, IGNORE (-100) where it does not. Prompt tokens are ignored (completion-only loss); text
records count every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

IGNORE = -100


def _ids(tokenizer: Any, text: str) -> list[int]:
    # Special-token strings in the text (a chat template's <bos>, <end_of_turn>) become their ids.
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_example(tokenizer: Any, record: Mapping[str, str], max_len: int,
                   end_of_turn: int | None = None) -> tuple[list[int], list[int]]:
    """{"prompt", "completion"} or {"text"} → (input_ids, labels), at most max_len tokens.

    BOS is prepended and EOS appended unless the text already has them (chat templates add BOS).
    A completion that closes with `end_of_turn` (the chat template's end-of-turn token id, e.g.
    Gemma's <end_of_turn>) ends at that token instead: generation stops there, so the template's
    newline after it and an EOS would be tokens learned but never generated.
    Too long: the prompt loses tokens from its left (after BOS), so the completion survives; a
    completion or text longer than max_len keeps its first max_len tokens.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    is_text = "text" in record
    prompt = _ids(tokenizer, "" if is_text else record["prompt"])
    completion = _ids(tokenizer, record["text"] if is_text else record["completion"])
    head = prompt if prompt else completion
    if bos is not None and (not head or head[0] != bos):
        prompt = [bos, *prompt]
    closed = not is_text and end_of_turn is not None and end_of_turn in completion
    if closed:
        cut = len(completion) - completion[::-1].index(end_of_turn)
        closed = not tokenizer.decode(completion[cut:], skip_special_tokens=True).strip()
        if closed:
            completion = completion[:cut]
    if not closed and eos is not None and (not completion or completion[-1] != eos):
        completion = [*completion, eos]
    room = max_len - len(completion)
    if room <= 0:
        prompt, completion = [], completion[:max_len]
    elif len(prompt) > room:
        keep_bos = prompt[:1] if bos is not None and prompt[0] == bos else []
        prompt = keep_bos + prompt[len(prompt) - room + len(keep_bos):]
    return prompt + completion, [IGNORE] * len(prompt) + completion


@dataclass(frozen=True)
class PackedRow:
    """Several examples in one row. seq_ids number the examples (0, 1, ...) so attention can be made
    block-diagonal; position_ids restart at 0 with each example. prefix_ids (None: no sharing) give,
    per token, the seq id of a shared prompt prefix it also attends to, -1 for none: with a shared
    prefix the row holds that prefix once, and each example sharing it continues from its positions."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_ids: list[int]
    prefix_ids: list[int] | None = None


def shared_prompt_prefix(examples: Sequence[tuple[list[int], list[int]]], min_len: int = 8) -> list[int]:
    """The prompt tokens every prompt/completion example starts with (a task's fixed instruction and
    template), or [] if fewer than `min_len`. Text examples (loss from the first token) are ignored.
    The prefix stops a token short of the first label, so what follows it is still prompt in every
    example (the position predicting it is shared and carries no loss)."""
    prompts = [(ids, labels) for ids, labels in examples if len(labels) > 1 and labels[1] == IGNORE]
    if len(prompts) < 2:
        return []
    first = prompts[0][0]
    n = min(len(ids) for ids, _ in prompts)
    for ids, labels in prompts:
        unlabeled = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
        n = min(n, unlabeled - 1)
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    return first[:n] if n >= min_len else []


def pack(examples: Sequence[tuple[list[int], list[int]]], seq_len: int,
         shared_prefix: Sequence[int] = ()) -> list[PackedRow]:
    """Greedily fill rows of at most seq_len tokens with (input_ids, labels) examples, in order.

    Each example's first label is IGNORE: it would be the target of the previous example's last token.
    With `shared_prefix` (from `shared_prompt_prefix`), a row holds that prefix once and each example
    starting with it contributes only the rest: the same logits and gradients as packing them whole
    (tested), for the prefix's tokens once per row instead of once per example.
    Rows are not padded; the collator pads (labels IGNORE) to the batch's longest row.
    """
    prefix = list(shared_prefix)
    k = len(prefix)
    rows: list[PackedRow] = []
    row: dict[str, list[int]] = {}
    prefix_sid: int | None = None  # seq id of this row's prefix block

    def flush() -> None:
        nonlocal row, prefix_sid
        if row and row["ids"]:
            rows.append(PackedRow(row["ids"], row["labels"], row["positions"], row["seq"],
                                  row["prefix"] if k else None))
        row, prefix_sid = {"ids": [], "labels": [], "positions": [], "seq": [], "prefix": []}, None

    def add(ids: list[int], labels: list[int], start: int, sees: int) -> int:
        sid = row["seq"][-1] + 1 if row["seq"] else 0
        row["ids"] += ids
        row["labels"] += [IGNORE, *labels[1:]]
        row["positions"] += range(start, start + len(ids))
        row["seq"] += [sid] * len(ids)
        row["prefix"] += [sees] * len(ids)
        return sid

    flush()
    for example_ids, example_labels in examples:
        n = len(example_ids)
        if n > seq_len:
            raise ValueError(f"an example of {n} tokens does not fit seq_len {seq_len}; "
                             "encode with max_len <= seq_len")
        if n != len(example_labels):
            raise ValueError("input_ids and labels differ in length")
        if n == 0:
            continue
        shares = k > 0 and n > k and example_ids[:k] == prefix
        cost = (n - k + (k if prefix_sid is None else 0)) if shares else n
        if len(row["ids"]) + cost > seq_len:
            flush()
        if not shares:
            add(example_ids, example_labels, 0, -1)
            continue
        if prefix_sid is None:
            prefix_sid = add(prefix, [IGNORE] * k, 0, -1)
        add(example_ids[k:], example_labels[k:], k, prefix_sid)
    flush()
    return rows
