"""Load a base model and put an adapter on it, refusing an adapter made for another base."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraops.data.formats import end_of_turn_id
from loraops.errors import BaseMismatchError
from loraops.lora import Adapter, apply_adapter, read_adapter
from loraops.models.fingerprint import short
from loraops.models.resolve import BaseInfo, resolve_base

log = logging.getLogger("loraops")


@dataclass
class LoadedBase:
    model: nn.Module
    tokenizer: object
    info: BaseInfo


def load_base(spec: str, dtype: torch.dtype = torch.float32, progress: bool = False) -> LoadedBase:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = resolve_base(spec, progress=progress)
    model = AutoModelForCausalLM.from_pretrained(info.path, dtype=dtype, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    _stop_at_end_of_turn(model, tokenizer)
    return LoadedBase(model, tokenizer, info)


# config.json `architectures` that make a directory an encoder served for classification.
ENCODER_ARCHITECTURES = ("ForSequenceClassification", "ForMaskedLM")


@dataclass
class EncoderBase(LoadedBase):
    untrained: list[str]   # modules the checkpoint has no weights for (a masked-LM checkpoint's pooler and head)


def is_encoder(spec: str) -> bool:
    """`spec` is an HF directory whose config.json names a `*ForSequenceClassification` or
    `*ForMaskedLM` class (a BERT/RoBERTa/DeBERTa-style encoder). Known names and .gguf files are
    causal LMs. Reads one small file: no torch."""
    config = Path(spec).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(a, str) and a.endswith(ENCODER_ARCHITECTURES) for a in architectures)


def load_encoder_base(spec: str, dtype: torch.dtype = torch.float32) -> EncoderBase:
    """The encoder as `AutoModelForSequenceClassification` with the checkpoint's own label count;
    the modules the checkpoint lacks are left at their random init (adapters must bring them)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    info = resolve_base(spec)
    model, loading = AutoModelForSequenceClassification.from_pretrained(
        info.path, dtype=dtype, use_safetensors=True, output_loading_info=True)
    missing = set(loading["missing_keys"]) | {k[0] if isinstance(k, tuple) else k for k in loading["mismatched_keys"]}
    return EncoderBase(model.eval(), AutoTokenizer.from_pretrained(info.path), info,
                       sorted({k.rsplit(".", 1)[0] for k in missing}))


def _stop_at_end_of_turn(model: nn.Module, tokenizer) -> None:
    """Make generation stop where a chat turn ends. Gemma 3's GGUF (and so our converted base) lists only
    <eos> in its generation config, not <end_of_turn>: a chat model then runs past the end of its answer,
    and everything that reads the stop set (evaluation, the serving engine) printed what came after."""
    eot = end_of_turn_id(tokenizer)
    config = getattr(model, "generation_config", None)
    if eot is None or config is None:
        return
    eos = config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    if eot not in ids:
        config.eos_token_id = [*ids, eot]


def check_base(adapter: Adapter, base_name: str, base_fingerprint: str, force: bool = False) -> None:
    """An adapter with a fingerprint must match the base's, unless forced (then a warning, and the
    override is recorded in the adapter's metadata). One without (made by PEFT) is checked later by
    module names and shapes."""
    bound = adapter.base_fingerprint
    if bound is None:
        log.warning("adapter has no base fingerprint (made by PEFT?): checking it by module names and shapes only")
        return
    if bound == base_fingerprint:
        return
    what = (f"adapter was trained on base {adapter.meta.get('base_name', '?')} ({short(bound)}) but the base "
            f"is {base_name} ({short(base_fingerprint)})")
    if not force:
        raise BaseMismatchError(what + "; pass --force to load it anyway")
    log.warning("%s; loading anyway because of --force", what)
    adapter.meta["forced_base"] = base_fingerprint


def load_adapter_onto(model: nn.Module, info: BaseInfo, adapter: Adapter | str, force: bool = False) -> Adapter:
    """Check the binding, then inject and load `adapter` (a directory or an Adapter) into `model`."""
    if not isinstance(adapter, Adapter):
        adapter = read_adapter(adapter)
    check_base(adapter, info.name, info.fingerprint, force)
    apply_adapter(model, adapter)
    return adapter
