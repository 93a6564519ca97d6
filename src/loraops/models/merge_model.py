"""`loraops merge`: fold an adapter into its base and write a plain transformers model directory.

The merge itself is the pure `merge_state_dict`; this module loads, verifies and writes.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraops.errors import MergeVerificationError
from loraops.lora import apply_adapter, merge_state_dict, read_adapter
from loraops.atomic import atomic_dir
from loraops.models.diffusion import is_pipeline_dir, merge_pipeline_to_dir
from loraops.models.load import check_base
from loraops.models.resolve import resolve_base

PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "Invoice INV-1042 from Acme GmbH, total 1,234.56 EUR, due 2024-05-01.",
    "def add(a, b):\n    return a + b",
]


@dataclass
class MergeReport:
    base_name: str
    max_abs_diff: float
    out_dir: Path


def _auto_class(task_type: str | None):
    import transformers

    return {"SEQ_CLS": transformers.AutoModelForSequenceClassification}.get(
        task_type or "", transformers.AutoModelForCausalLM)


def probe_inputs(tokenizer, max_len: int = 32) -> dict[str, torch.Tensor]:
    return tokenizer(PROBES, return_tensors="pt", padding=True, truncation=True, max_length=max_len)


def max_logit_diff(a: nn.Module, b: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        la, lb = a(**inputs).logits.float(), b(**inputs).logits.float()
    mask = inputs["attention_mask"].bool()
    if la.ndim == 3:  # only positions that are real tokens
        la, lb = la[mask], lb[mask]
    return (la - lb).abs().max().item()


def merge_to_dir(base: str, adapter_dir: str | Path, out_dir: str | Path, tolerance: float = 1e-3,
                 force: bool = False) -> MergeReport:
    from transformers import AutoTokenizer

    info = resolve_base(base, progress=True)
    adapter = read_adapter(adapter_dir)
    check_base(adapter, info.name, info.fingerprint, force)
    if is_pipeline_dir(info.path):  # Stable Diffusion: a whole pipeline directory comes out
        return MergeReport(info.name, merge_pipeline_to_dir(info, adapter, out_dir, tolerance), Path(out_dir))
    if adapter.config.task_type == "SEQ_CLS" and adapter.meta.get("labels"):  # trained by loraops: k labels
        from loraops.train.classify import load_classifier_base

        model = load_classifier_base(base, adapter.meta["labels"], int(adapter.meta.get("head_seed", 0))).model
    else:
        model = _auto_class(adapter.config.task_type).from_pretrained(info.path, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    merged = copy.deepcopy(model)
    merged.load_state_dict(merge_state_dict(model.state_dict(), adapter))
    apply_adapter(model, adapter)  # the unmerged reference
    diff = max_logit_diff(model, merged, probe_inputs(tokenizer))
    if not diff <= tolerance:
        raise MergeVerificationError(f"merged logits differ from the adapter's by {diff:.3e} > {tolerance:g}")

    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        lineage = {"merged_from": {"base_name": info.name, "base_fingerprint": info.fingerprint,
                                   "adapter": str(adapter_dir), "adapter_meta": adapter.meta},
                   "max_abs_logit_diff": diff}
        (tmp / "loraops.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    return MergeReport(info.name, diff, Path(out_dir))
