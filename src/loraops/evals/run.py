"""One evaluation: base and adapted model on the domain set and the general suite -> EvalReport.

One model is loaded; the adapter is injected once and switched off (`adapter_disabled`) for every
base-side pass, so base and adapted see identical inputs in identical batches. The report is what
the registry stores on a version (`record_eval`) and what `eval.json` holds for a local adapter.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from loraops.errors import AdapterFormatError, ConfigError, InvalidNameError, NotFoundError
from loraops.evals.constrained import compile_schema, schema_digest
from loraops.evals.domain import auto_max_new_tokens, data_file, examples_digest, load_examples, trainer_split
from loraops.evals.forgetting import Forgetting, forgetting_score
from loraops.evals.general import (GeneralScores, corpus_passages, corpus_scores, general_questions, qa_scores,
                                   suite_digest)
from loraops.evals.generate import adapter_disabled, generate
from loraops.evals.metrics import DomainScores, score_domain

SCHEMA = 1
EVAL_FILE = "eval.json"
QUANTIZE = (None, "int8")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how much of it. `max_new_tokens=None` sizes generation from the data
    (longest reference + 8, at most 256).

    `quantize="int8"` evaluates with the base's linears in int8 (`models.quantize`; the adapter stays
    fp32 on top), as a CPU deployment would serve it. `json_schema` decodes every domain answer under
    that schema (`constrained`), as `response_format` json_schema does in the server. Both are off by
    default, and both are recorded in the report's `comparable`."""

    data: str | Path | None = None
    max_examples: int | None = 200
    batch_size: int = 8
    max_new_tokens: int | None = None
    general_passages: int = 16
    general_tokens: int = 128  # per passage
    questions_per_kind: int = 10
    force: bool = False  # evaluate an adapter bound to another base anyway
    progress: bool = False
    quantize: str | None = None  # None (as loaded) or "int8"
    json_schema: dict | None = None  # constrained decoding of the domain answers

    def __post_init__(self) -> None:
        for name in ("max_examples", "batch_size", "max_new_tokens", "general_passages", "general_tokens",
                     "questions_per_kind"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"quantize must be one of {', '.join(map(str, QUANTIZE))}, got {self.quantize!r}")
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise ConfigError(f"json_schema must be a JSON schema object, got {type(self.json_schema).__name__}")


@dataclass
class EvalReport:
    """Domain scores of base and adapted side by side, general scores, forgetting. `comparable`
    names everything a score depends on (base, data, general suite, generation length): two
    reports are compared only when it is equal."""

    adapter: str
    base: dict[str, str]  # name, fingerprint
    comparable: dict[str, Any]
    general: GeneralScores
    forgetting: Forgetting
    domain_base: DomainScores | None = None
    domain_adapted: DomainScores | None = None
    samples: list[dict[str, str]] = field(default_factory=list)
    schema: int = SCHEMA

    @property
    def primary_metric(self) -> str | None:
        return self.domain_adapted.primary if self.domain_adapted else None

    @property
    def domain_gain(self) -> float | None:
        """adapted − base on the primary domain metric."""
        if self.domain_adapted is None or self.domain_base is None:
            return None
        return self.domain_adapted.primary_value - self.domain_base.primary_value

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["domain_gain"] = self.domain_gain
        d["primary_metric"] = self.primary_metric
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        """Inverse of to_dict; raises KeyError/TypeError on something else (callers treat that as no report)."""
        if d.get("schema") != SCHEMA:
            raise KeyError("schema")
        domain = {k: _scores(d[k]) if d.get(k) else None for k in ("domain_base", "domain_adapted")}
        return cls(d["adapter"], d["base"], d["comparable"], GeneralScores(**d["general"]),
                   Forgetting(**d["forgetting"]), samples=d.get("samples", []), **domain)


def _scores(d: dict[str, Any]):
    from loraops.evals.classify import ClassificationScores

    return ClassificationScores(**d) if "confusion" in d else DomainScores(**d)


class _Bar:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=True)

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.progress is None:
            yield lambda n: None
            return
        task = self.progress.add_task(description, total=total)
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            self.progress.remove_task(task)

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def evaluate(base: str, adapter: str | Path, config: EvalConfig = EvalConfig(),
             label: str | None = None) -> EvalReport:
    """Evaluate the adapter directory `adapter` against `base` (a known name, HF dir or .gguf)."""
    from loraops.lora import read_adapter
    from loraops.models import load_adapter_onto, load_base

    if config.data is not None:
        data_file(config.data)  # fail on a missing file before the minutes of loading a model
    grammar = compile_schema(config.json_schema) if config.json_schema is not None else None
    adapter_obj = read_adapter(adapter)
    if adapter_obj.config.task_type == "SEQ_CLS":  # an encoder classifier: evals/classify.py
        from loraops.evals.classify import evaluate_classifier

        return evaluate_classifier(base, adapter_obj, config, label or str(adapter))
    loaded = load_base(base, progress=config.progress)
    model, tokenizer = loaded.model, loaded.tokenizer
    if config.quantize == "int8":
        from loraops.models.quantize import quantize_for_inference_

        # Before the adapter goes on: only base linears become int8, LoRA wraps them in fp32.
        quantize_for_inference_(model, tokenizer)
    params = dict(model.named_parameters())
    base_params = {k: params[k].detach().clone() for k in adapter_obj.saved_modules if k in params}
    load_adapter_onto(model, loaded.info, adapter_obj, force=config.force)
    model.eval()

    def base_mode():
        return adapter_disabled(model, base_params)

    examples = []
    if config.data is not None:
        split = trainer_split(config.data, adapter_obj.meta)
        examples = load_examples(config.data, tokenizer, config.max_examples, split)
    max_new = config.max_new_tokens or (auto_max_new_tokens(examples, tokenizer) if examples else 0)
    limit = getattr(model.config, "max_position_embeddings", None)
    max_prompt = limit - max_new if limit else None
    passages = corpus_passages(config.general_passages)
    questions = general_questions(config.questions_per_kind)
    torch.manual_seed(0)  # nothing here samples; this only pins any stray randomness in model code
    with _Bar(config.progress) as bar:
        domain_base = domain_adapted = None
        samples: list[dict[str, str]] = []
        if examples:
            prompts = [e.prompt for e in examples]
            refs = [e.reference for e in examples]
            with bar.phase("domain: base", len(prompts)) as tick, base_mode():
                base_out = generate(model, tokenizer, prompts, max_new, config.batch_size, max_prompt, tick, grammar)
            with bar.phase("domain: adapted", len(prompts)) as tick:
                adapted_out = generate(model, tokenizer, prompts, max_new, config.batch_size, max_prompt, tick,
                                       grammar)
            domain_base = score_domain(prompts, base_out, refs)
            domain_adapted = score_domain(prompts, adapted_out, refs)
            samples = [{"prompt": p, "reference": r, "base": b, "adapted": a}
                       for p, r, b, a in list(zip(prompts, refs, base_out, adapted_out))[:3]]
        with bar.phase("general: perplexity/KL", len(passages)) as tick:
            # Half the generation batch: scoring keeps two full [batch, len, vocab] logits alive.
            score_batch = max(1, config.batch_size // 2)
            tokens, ppl_base, ppl_adapted, kl = corpus_scores(model, tokenizer, passages, base_mode,
                                                              config.general_tokens, score_batch, tick)
        with bar.phase("general: questions", 2 * len(questions)) as tick:
            kept, acc_base, acc_adapted = qa_scores(model, tokenizer, questions, base_mode, config.batch_size,
                                                    tick)
    general = GeneralScores(tokens, ppl_base, ppl_adapted, kl, len(questions), kept, acc_base, acc_adapted,
                            suite_digest(passages, questions, config.general_tokens))
    comparable = {"base_fingerprint": loaded.info.fingerprint, "general_suite": general.corpus_digest,
                  "data_digest": examples_digest(examples) if examples else None, "examples": len(examples),
                  "max_new_tokens": max_new}
    # Only when set: reports from before these options stay comparable to plain ones.
    if config.quantize is not None:
        comparable["quantize"] = config.quantize
    if config.json_schema is not None:
        comparable["json_schema"] = schema_digest(config.json_schema)
    return EvalReport(label or str(adapter), {"name": loaded.info.name, "fingerprint": loaded.info.fingerprint},
                      comparable, general, forgetting_score(ppl_base, ppl_adapted, kl, acc_base, acc_adapted),
                      domain_base, domain_adapted, samples)


def store_report(report: EvalReport, adapter_dir: str | Path) -> Path:
    """Write `adapter_dir`/eval.json atomically (readers see the old report or the new one)."""
    from loraops.atomic import write_text

    path = Path(adapter_dir) / EVAL_FILE
    write_text(path, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def _is_registry_ref(spec: str) -> bool:
    """NAME, NAME@VERSION or NAME@STAGE, as opposed to a path (which would have a separator)."""
    return "/" not in spec and "\\" not in spec and not spec.startswith((".", "~")) and not Path(spec).exists()


def evaluate_ref(base: str, adapter: str, config: EvalConfig = EvalConfig()) -> tuple[EvalReport, str]:
    """Evaluate an adapter directory or registry reference and store the report where it belongs:
    on the registry version (`record_eval`) or in ADAPTER_DIR/eval.json. -> (report, where stored)."""
    if not _is_registry_ref(adapter):
        report = evaluate(base, adapter, config)
        return report, str(store_report(report, adapter))
    try:
        from loraops.registry import Registry
    except ImportError:  # the registry extra is not installed: the name can only be a (missing) directory
        raise AdapterFormatError(f"adapter directory {adapter!r} does not exist") from None
    with Registry() as registry:
        try:
            version = registry.resolve(adapter)
        except (NotFoundError, InvalidNameError) as e:
            raise type(e)(f"{adapter!r} is neither an adapter directory nor in the registry ({e})") from None
        path = registry.fetch(version.ref)
        report = evaluate(base, path, config, label=version.ref)
        registry.record_eval(version.name, version.version, report.to_dict())
    return report, f"registry {version.ref}"
