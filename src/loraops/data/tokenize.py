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
    block-diagonal; position_ids restart at 0 with each example."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_ids: list[int]


def pack(examples: Sequence[tuple[list[int], list[int]]], seq_len: int) -> list[PackedRow]:
    """Greedily fill rows of at most seq_len tokens with (input_ids, labels) examples, in order.

    Each example's first label is IGNORE: it would be the target of the previous example's last token.
    Rows are not padded; the collator pads (labels IGNORE) to the batch's longest row.
    """
    rows: list[PackedRow] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    seq_ids: list[int] = []
    for example_ids, example_labels in examples:
        n = len(example_ids)
        if n > seq_len:
            raise ValueError(f"an example of {n} tokens does not fit seq_len {seq_len}; "
                             "encode with max_len <= seq_len")
        if n != len(example_labels):
            raise ValueError("input_ids and labels differ in length")
        if n == 0:
            continue
        if len(ids) + n > seq_len:
            rows.append(PackedRow(ids, labels, positions, seq_ids))
            ids, labels, positions, seq_ids = [], [], [], []
        sid = seq_ids[-1] + 1 if seq_ids else 0
        ids += example_ids
        labels += [IGNORE, *example_labels[1:]]
        positions += range(n)
        seq_ids += [sid] * n
    if ids:
        rows.append(PackedRow(ids, labels, positions, seq_ids))
    return rows
