"""Sequence classification: LoRA on a BERT/RoBERTa/DeBERTa-style encoder, the head trained whole.

Data: {"text": str, "label": str | int} per line (curated or not). Labels are the sorted distinct
labels of the training set, as strings; the head gets one output per label (`id2label` in the
model config, `labels` in loraops.json).

The base is loaded as `AutoModelForSequenceClassification` with that many labels. Every module
whose weights the checkpoint lacks (the classifier; a pooler a masked-LM checkpoint has none of)
is freshly initialised, from the run's seed, so `loraops eval` can rebuild the same untrained
head; those modules go to `modules_to_save` and train whole, PEFT's SEQ_CLS layout, so
`PeftModel.from_pretrained` loads the adapter with the same logits. The loss is cross-entropy,
optionally class-weighted ("balanced": n / (k · n_c), scikit-learn's rule; or LABEL=W,...), as a
weighted mean: Σ w_y · CE / Σ w_y over the step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from loraops.errors import ConfigError, DataFormatError, TrainDataError
from loraops.lora import LoRAConfig
from loraops.models.resolve import BaseInfo, resolve_base
from loraops.train.batches import Dataset
from loraops.train.config import TrainConfig
from loraops.train.task import EpochPlan, shuffled

HEADS = ("classifier", "score")  # what transformers calls a sequence-classification head


def label_of(record: dict, line: int | None = None) -> str:
    label = record.get("label")
    if not isinstance(record.get("text"), str) or isinstance(label, (dict, list, float)) or label is None:
        raise DataFormatError(line or 0, 'classification data needs {"text": str, "label": str or int}')
    return str(label)


def labels_of(data: Dataset) -> list[str]:
    """The sorted distinct labels of the training records; val labels must be among them."""
    labels = sorted({label_of(r, i + 1) for i, r in enumerate(data.train)})
    if len(labels) < 2:
        raise TrainDataError(f"classification needs at least two labels in the training data, found {labels}")
    unseen = sorted({label_of(r) for r in data.val} - set(labels))
    if unseen:
        raise TrainDataError(f"validation labels {unseen} never occur in the training data")
    return labels


@dataclass
class ClassifierBase:
    model: nn.Module
    tokenizer: object
    info: BaseInfo
    labels: list[str]
    new_modules: list[str]  # modules the checkpoint had no weights for: trained whole, saved with the adapter


def load_classifier_base(spec: str, labels: list[str], seed: int) -> ClassifierBase:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    info = resolve_base(spec, progress=True)
    torch.manual_seed(seed)  # the new head's init: `loraops eval` rebuilds the same untrained head
    model, loading = AutoModelForSequenceClassification.from_pretrained(
        info.path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True,
        output_loading_info=True, use_safetensors=True)
    missing = set(loading["missing_keys"]) | {k[0] if isinstance(k, tuple) else k for k in loading["mismatched_keys"]}
    heads = [h for h in HEADS if hasattr(model, h)]
    new = sorted({k.rsplit(".", 1)[0] for k in missing} - set(heads))
    new = [m for m in new if not any(m.startswith(h + ".") for h in heads)]
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    if tokenizer.pad_token is None:
        raise ConfigError(f"the tokenizer of {spec} has no pad token; classification batches need one")
    return ClassifierBase(model.eval(), tokenizer, info, labels, heads + new)


def class_weights(spec: str | None, labels: list[str], counts: Counter) -> torch.Tensor:
    """[k] per-label loss weights: all 1, "balanced" (n / (k · n_c)), or "LABEL=W,..." (others 1)."""
    if spec is None:
        return torch.ones(len(labels))
    if spec == "balanced":
        n = sum(counts.values())
        return torch.tensor([n / (len(labels) * counts[label]) for label in labels])
    weights = dict.fromkeys(labels, 1.0)
    for part in spec.split(","):
        label, _, value = (x.strip() for x in part.partition("="))
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if label not in weights or not w > 0:
            raise ConfigError(f"--class-weights {spec!r}: expected 'balanced' or LABEL=WEIGHT pairs with "
                              f"positive weights over the labels {labels}")
        weights[label] = w
    return torch.tensor([weights[label] for label in labels])


def encode(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    return [tokenizer(t, truncation=True, max_length=max_len)["input_ids"] for t in texts]


def collate(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] input ids and their attention mask."""
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return input_ids, mask


def max_length(model: nn.Module, tokenizer, seq_len: int) -> int:
    limits = [seq_len, getattr(model.config, "max_position_embeddings", seq_len)]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


class ClassifyTask:
    """task.py's interface for classification: items are (input_ids, label index)."""

    unit = "examples"

    def __init__(self, base: ClassifierBase, data: Dataset, cfg: TrainConfig):
        self.cfg, self.base = cfg, base
        index = {label: i for i, label in enumerate(base.labels)}
        self.counts = Counter(label_of(r) for r in data.train)
        self.weights = class_weights(cfg.class_weights, base.labels, self.counts)
        self.pad_id = base.tokenizer.pad_token_id
        n = max_length(base.model, base.tokenizer, cfg.seq_len)

        def items(records):
            return list(zip(encode(base.tokenizer, [r["text"] for r in records], n),
                            [index[label_of(r)] for r in records]))
        train, self.val_items = items(data.train), items(data.val)
        self.plan = EpochPlan(lambda epoch: shuffled(train, cfg.seed, epoch), cfg.batch_size * cfg.grad_accum,
                              cfg.epochs, cfg.max_steps)

    def lora_config(self) -> LoRAConfig:
        return replace(self.cfg.lora_config(), modules_to_save=self.base.new_modules, task_type="SEQ_CLS")

    def prepare(self, model) -> None:
        pass

    def weight(self, items) -> float:
        return float(sum(self.weights[y] for _, y in items))

    def loss(self, model, items) -> tuple[torch.Tensor, int]:
        ids, mask = collate([x for x, _ in items], self.pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # [B, k]
        y = torch.tensor([y for _, y in items])
        return F.cross_entropy(logits, y, weight=self.weights, reduction="sum"), len(items)

    def step_record(self, items) -> dict:
        return {}

    def meta(self) -> dict:
        return {"labels": self.base.labels, "label_counts": dict(sorted(self.counts.items())),
                "class_weights": dict(zip(self.base.labels, self.weights.tolist())), "head_seed": self.cfg.seed}
