"""Evaluating a classification adapter: accuracy, macro-F1 and the confusion matrix against the
untrained head, and forgetting as masked-LM loss on the general corpus, base vs adapted encoder.

Domain. The "base" side is the base encoder with the head the trainer started from (rebuilt from
the run's seed, `train/classify.py`): a classifier no training has touched, i.e. chance level for
this label set, so the domain gain is what training bought. The primary metric is macro-F1
(every class counts the same, whatever its frequency).

Forgetting. The base checkpoint's masked-LM head is put on the encoder (AutoModelForMaskedLM from
the same directory) and the adapter's encoder LoRA on it; 15% of the general passages' tokens are
masked (seeded, the same positions for both sides) and the masked-token perplexity and KL(base ‖
adapted) are measured, so the same forgetting score and gate apply as for language models. A base
without masked-LM weights cannot be measured this way and is refused with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from loraops.errors import ConfigError, EvalDataError

MASK_FRACTION = 0.15


@dataclass(frozen=True)
class ClassificationScores:
    """One model on a labelled set. confusion[i][j]: examples of label i predicted as label j."""

    examples: int
    accuracy: float
    macro_f1: float
    labels: list[str]
    confusion: list[list[int]]
    per_class_f1: dict[str, float] = field(default_factory=dict)
    primary: str = "macro_f1"

    @property
    def primary_value(self) -> float:
        return getattr(self, self.primary)


def score_classification(predicted: Sequence[int], expected: Sequence[int], labels: list[str]) -> ClassificationScores:
    """Pure: label indices -> accuracy, macro-F1 (F1 of a class absent from both sides counts 0 and
    is left out of the mean, as scikit-learn's labels-present rule), confusion matrix."""
    if len(predicted) != len(expected) or not expected:
        raise ValueError("predicted and expected must be non-empty and of equal length")
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for p, e in zip(predicted, expected):
        confusion[e][p] += 1
    f1s = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        fp = sum(confusion[j][i] for j in range(k)) - tp
        fn = sum(confusion[i]) - tp
        if tp + fp + fn:
            f1s[label] = 2 * tp / (2 * tp + fp + fn)
    accuracy = sum(confusion[i][i] for i in range(k)) / len(expected)
    return ClassificationScores(len(expected), accuracy, sum(f1s.values()) / len(f1s), list(labels), confusion, f1s)


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], max_len: int, batch_size: int) -> list[int]:
    from loraops.train.classify import collate, encode

    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = collate(encode(tokenizer, texts[i:i + batch_size], max_len), tokenizer.pad_token_id)
        out += model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
    return out


def masked_positions(ids: torch.Tensor, special: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B, T] bool: MASK_FRACTION of the non-special tokens of each row, at least one per row."""
    scores = torch.rand(ids.shape, generator=generator).masked_fill(special, 2.0)
    n = ((~special).sum(1).float() * MASK_FRACTION).ceil().clamp(min=1).long()  # [B]
    rank = scores.argsort(1).argsort(1)
    return (rank < n[:, None]) & ~special


@torch.no_grad()
def masked_lm_scores(mlm, tokenizer, passages: list[str], base_mode, max_tokens: int, batch_size: int
                     ) -> tuple[int, float, float, float]:
    """-> (masked tokens, ppl_base, ppl_adapted, mean KL(base ‖ adapted)) over the masked tokens."""
    from loraops.evals.general import kl_divergence, token_log_probs
    from loraops.train.classify import collate

    if tokenizer.mask_token_id is None:
        raise ConfigError("the base's tokenizer has no mask token; masked-LM forgetting cannot be measured")
    g = torch.Generator().manual_seed(0)
    nll_base = nll_adapted = kl = 0.0
    count = 0
    for i in range(0, len(passages), batch_size):
        rows = [tokenizer(p, truncation=True, max_length=max_tokens)["input_ids"] for p in passages[i:i + batch_size]]
        ids, mask = collate(rows, tokenizer.pad_token_id)
        special = torch.tensor([tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
                                + [1] * (ids.shape[1] - len(r)) for r in rows]).bool()
        where = masked_positions(ids, special, g)
        masked = ids.masked_fill(where, tokenizer.mask_token_id)
        with base_mode():
            base = mlm(input_ids=masked, attention_mask=mask).logits[where]     # [n, vocab]
        adapted = mlm(input_ids=masked, attention_mask=mask).logits[where]
        targets = ids[where]
        nll_base -= token_log_probs(base, targets).sum().item()
        nll_adapted -= token_log_probs(adapted, targets).sum().item()
        kl += kl_divergence(base, adapted).sum().item()
        count += len(targets)
    return count, math.exp(nll_base / count), math.exp(nll_adapted / count), kl / count


def load_masked_lm(path, adapter):
    """The base's AutoModelForMaskedLM with the adapter's encoder LoRA on it (the head and pooler,
    which the masked-LM path never runs, left out). Raises if the checkpoint has no MLM head."""
    from transformers import AutoModelForMaskedLM

    from loraops.lora import Adapter, apply_adapter

    try:
        mlm, loading = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, use_safetensors=True)
    except ValueError as e:
        raise ConfigError(f"{path} has no masked-LM model class: {str(e).splitlines()[0]}") from None
    if loading["missing_keys"]:
        raise ConfigError(f"{path} has no masked-LM head weights (e.g. {sorted(loading['missing_keys'])[0]}); "
                          "classification forgetting is measured as masked-LM loss, so the base checkpoint "
                          "must include them (bert-base-uncased, roberta-base and the like do)")
    paths = {p for p, _ in mlm.named_modules()}
    modules = {p: m for p, m in adapter.modules.items() if p in paths}
    config = replace(adapter.config, target_modules=sorted(modules), modules_to_save=None, task_type=None,
                     rank_pattern={k: v for k, v in adapter.config.rank_pattern.items() if k in paths},
                     alpha_pattern={k: v for k, v in adapter.config.alpha_pattern.items() if k in paths})
    apply_adapter(mlm, Adapter(config, modules))
    return mlm.eval()


def read_labelled(data, max_examples: int | None) -> tuple[list[str], list[str]]:
    """(texts, labels) of a curated dir's val.jsonl or a .jsonl file of {"text", "label"} lines."""
    import json

    from loraops.evals.domain import data_file
    from loraops.train.classify import label_of

    texts, labels = [], []
    with data_file(data).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rec = json.loads(line)
                labels.append(label_of(rec, n))
                texts.append(rec["text"])
            if max_examples and len(texts) >= max_examples:
                break
    if not texts:
        raise EvalDataError(f"{data} holds no {{'text', 'label'}} examples")
    return texts, labels


def labelled_digest(texts: list[str], labels: list[str]) -> str:
    import hashlib
    import json

    return "sha256:" + hashlib.sha256(json.dumps([texts, labels], ensure_ascii=False).encode()).hexdigest()


def evaluate_classifier(base: str, adapter, config, label: str | None = None):
    """EvalReport of a SEQ_CLS adapter (an Adapter read from `label`'s directory) on `base`."""
    from loraops.evals.domain import trainer_split
    from loraops.evals.forgetting import forgetting_score
    from loraops.evals.general import GeneralScores, corpus_passages, suite_digest
    from loraops.evals.generate import adapter_disabled
    from loraops.evals.run import EvalReport
    from loraops.models.load import check_base
    from loraops.train.classify import load_classifier_base, max_length

    if config.quantize is not None or config.json_schema is not None:
        raise ConfigError("int8 and constrained evaluation are for language-model adapters, not classifiers")
    labels = adapter.meta.get("labels")
    if not labels:
        raise ConfigError("classification adapter has no label list in loraops.json (was it trained by loraops?); "
                          "its head's outputs cannot be named")
    seed = int(adapter.meta.get("head_seed", (adapter.meta.get("hyperparameters") or {}).get("seed", 0)))
    loaded = load_classifier_base(base, labels, seed)
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    check_base(adapter, info.name, info.fingerprint, config.force)
    params = dict(model.named_parameters())
    base_params = {k: params[k].detach().clone() for k in adapter.saved_modules if k in params}
    from loraops.lora import apply_adapter

    apply_adapter(model, adapter)
    model.eval()
    domain_base = domain_adapted = None
    comparable = {"base_fingerprint": info.fingerprint, "task": "classification"}
    if config.data is not None:
        split = trainer_split(config.data, adapter.meta)
        if split is not None:  # the single file it trained on: only the trainer's held-out records
            from loraops.train.batches import load_dataset

            val = load_dataset(config.data, *split).val[:config.max_examples]
            texts, names = [r["text"] for r in val], [str(r["label"]) for r in val]
        else:
            texts, names = read_labelled(config.data, config.max_examples)
        unknown = sorted(set(names) - set(labels))
        if unknown:
            raise EvalDataError(f"labels {unknown} in {config.data} are not among the adapter's {labels}")
        expected = [labels.index(n) for n in names]
        n = max_length(model, tokenizer, 512)
        with adapter_disabled(model, base_params):
            domain_base = score_classification(predict(model, tokenizer, texts, n, config.batch_size), expected, labels)
        domain_adapted = score_classification(predict(model, tokenizer, texts, n, config.batch_size), expected, labels)
        comparable.update(data_digest=labelled_digest(texts, names), examples=len(texts))
    passages = corpus_passages(config.general_passages)
    mlm = load_masked_lm(info.path, adapter)
    tokens, ppl_base, ppl_adapted, kl = masked_lm_scores(mlm, tokenizer, passages, lambda: adapter_disabled(mlm),
                                                         config.general_tokens, max(1, config.batch_size // 2))
    general = GeneralScores(tokens, ppl_base, ppl_adapted, kl, 0, 0, None, None,
                            suite_digest(passages, [], config.general_tokens), measure="masked-lm")
    comparable["general_suite"] = general.corpus_digest
    return EvalReport(label or "adapter", {"name": info.name, "fingerprint": info.fingerprint}, comparable, general,
                      forgetting_score(ppl_base, ppl_adapted, kl), domain_base, domain_adapted)
