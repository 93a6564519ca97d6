"""Training data: read records, tokenize, pack per epoch in a seeded order, collate into tensors,
and the block-diagonal causal mask that keeps packed examples from seeing each other."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from loraops.data.formats import end_of_turn_id
from loraops.data.tokenize import IGNORE, PackedRow, encode_example, pack
from loraops.errors import DataFormatError, TrainDataError

Example = tuple[list[int], list[int]]  # (input_ids, labels)


@dataclass
class Dataset:
    train: list[dict]
    val: list[dict]
    digest: str  # sha256 naming the exact train + val bytes


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(n, f"not JSON ({e.msg})", str(path)) from None
            ok = isinstance(rec, dict) and (
                isinstance(rec.get("text"), str)
                or (isinstance(rec.get("prompt"), str) and isinstance(rec.get("completion"), str)))
            if not ok:
                raise DataFormatError(n, 'expected {"prompt", "completion"} or {"text"} strings '
                                         "(run `loraops data curate` first for other formats)", str(path))
            records.append(rec)
    return records


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def load_dataset(data: str | Path, val_fraction: float = 0.05, seed: int = 0) -> Dataset:
    """A curated DIR (train.jsonl [+ val.jsonl] [+ report.json]) or one JSONL file, whose val split
    is a seeded random `val_fraction` of its records (at least one when there are two or more)."""
    path = Path(data)
    if path.is_dir():
        train_file, val_file = path / "train.jsonl", path / "val.jsonl"
        if not train_file.is_file():
            raise TrainDataError(f"{path} has no train.jsonl (a curated directory from `loraops data curate`, "
                                 "or pass a .jsonl file)")
        files = [train_file] + ([val_file] if val_file.is_file() else [])
        train = _read_jsonl(train_file)
        val = _read_jsonl(val_file) if val_file.is_file() else []
        digest = _sha256(files)
        report = path / "report.json"
        if report.is_file():  # the curation report names the dataset the same way (sha256 of its files)
            digest = json.loads(report.read_text()).get("output_sha256") or digest
    elif path.is_file():
        records = _read_jsonl(path)
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(val_fraction * len(records))) if val_fraction > 0 and len(records) >= 2 else 0
        val = [records[i] for i in sorted(order[:n_val])]
        train = [records[i] for i in sorted(order[n_val:])]
        digest = _sha256([path])
    else:
        raise TrainDataError(f"training data {str(path)!r} does not exist")
    if not train:
        raise TrainDataError(f"no training records in {path}")
    return Dataset(train, val, digest)


def encode_all(tokenizer, records: list[dict], seq_len: int) -> list[Example]:
    """Tokenize (completion-only labels for prompt/completion, ending at the chat template's
    end-of-turn token; every token for text); examples with nothing to learn from are dropped."""
    end_of_turn = end_of_turn_id(tokenizer)
    examples = [encode_example(tokenizer, r, seq_len, end_of_turn) for r in records]
    return [e for e in examples if any(label != IGNORE for label in e[1][1:])]


def epoch_rows(examples: list[Example], seq_len: int, seed: int, epoch: int,
               shared_prefix: list[int] | tuple = ()) -> list[PackedRow]:
    """This epoch's packed rows: examples shuffled by (seed, epoch), then packed greedily (the shared
    prompt prefix once per row, see `pack`). A pure function, so a resumed run rebuilds exactly the
    rows it was in the middle of."""
    order = list(range(len(examples)))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return pack([examples[i] for i in order], seq_len, shared_prefix)


@dataclass
class Batch:
    """Right-padded rows. input_ids, labels, position_ids, seq_ids: [B, T]; seq_ids is -1 on padding.
    prefix_ids [B, T] (rows packed with a shared prefix): the seq id each token also attends to, or -1."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    seq_ids: torch.Tensor
    prefix_ids: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int((self.seq_ids >= 0).sum())

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def collate(rows: list[PackedRow], pad_id: int) -> Batch:
    width = max(len(r.input_ids) for r in rows)

    def padded(field: str, fill: int) -> torch.Tensor:
        return torch.tensor([(getattr(r, field) or [-1] * len(r.input_ids)) + [fill] * (width - len(r.input_ids))
                             for r in rows])

    shared = any(r.prefix_ids is not None for r in rows)
    return Batch(padded("input_ids", pad_id), padded("labels", IGNORE), padded("position_ids", 0),
                 padded("seq_ids", -1), padded("prefix_ids", -1) if shared else None)


def block_causal_mask(seq_ids: torch.Tensor, dtype: torch.dtype, sliding_window: int | None = None,
                      prefix_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """seq_ids [B, T] -> additive mask [B, 1, T, T]: 0 where query q may attend key k (same example and
    k <= q, or k in the shared prefix q's prefix_ids name; and, if sliding_window is given, q - k <
    sliding_window in positions: position_ids [B, T], else row indices), the dtype's minimum elsewhere.
    Padding attends only to itself, so no softmax row is empty. Transformers passes a 4D mask through
    unchanged."""
    t = seq_ids.shape[1]
    idx = torch.arange(t, device=seq_ids.device)
    causal = (idx[None, :] <= idx[:, None])[None]  # [1, q, k]
    allowed = (seq_ids[:, :, None] == seq_ids[:, None, :]) & causal  # [B, q, k]
    if prefix_ids is not None:
        # the prefix block precedes every example that shares it, so this is causal too
        allowed |= (prefix_ids[:, :, None] == seq_ids[:, None, :]) & (prefix_ids[:, :, None] >= 0)
    if sliding_window is not None:
        pos = position_ids if position_ids is not None else idx[None].expand_as(seq_ids)
        allowed &= pos[:, :, None] - pos[:, None, :] < sliding_window
    allowed |= torch.eye(t, dtype=torch.bool, device=seq_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seq_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def attention_mask_for(config, seq_ids: torch.Tensor, dtype: torch.dtype, prefix_ids: torch.Tensor | None = None,
                       position_ids: torch.Tensor | None = None):
    """The mask argument for this model: one 4D mask, or for models that mix sliding-window and
    global layers (Gemma 3) the per-layer-type dict their forward accepts."""
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    full = block_causal_mask(seq_ids, dtype, prefix_ids=prefix_ids)
    if "sliding_attention" in layer_types and window:
        return {"full_attention": full,
                "sliding_attention": block_causal_mask(seq_ids, dtype, window, prefix_ids, position_ids)}
    return full
