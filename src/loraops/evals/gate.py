"""The promotion gate: an adapter version reaches production only if it beats what is there on its
domain and has not forgotten too much.

    gate = PromotionGate(GateConfig(margin=0.02, max_forgetting=0.10), base="gemma-3-270m", data="data/")
    registry.promote("acme-invoices", 3, gate=gate)      # GateFailedError with the numbers if refused

Rules, in order (the first that fails refuses):
  1. the candidate has a domain evaluation (val data was given when it was evaluated);
  2. forgetting ≤ max_forgetting;
  3. candidate's primary domain metric − reference's > margin, where the reference is the current
     production version evaluated on the same data, or the base when there is none.
Evaluations stored on the versions are reused when comparable (same base, data, general suite and
generation length); otherwise the gate runs one and stores it (`record_eval`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraops.errors import ConfigError, NotFoundError
from loraops.evals.run import EvalConfig, EvalReport, evaluate

PRODUCTION = "production"


@dataclass(frozen=True)
class GateConfig:
    margin: float = 0.0  # required improvement of the primary domain metric (absolute, e.g. 0.02 = 2 points)
    max_forgetting: float = 0.10  # the forgetting score may not exceed this (0.10 = 10% worse than the base)

    def __post_init__(self) -> None:
        if self.max_forgetting < 0:
            raise ConfigError(f"max_forgetting must be >= 0, got {self.max_forgetting!r}")


@dataclass
class PromotionGate:
    """A `Gate` for `Registry.promote`: called as gate(registry, name, version) -> (ok, reason).

    Without `data` the gate can only reuse stored evaluations; with it, stored ones must be on that
    data (same digest) or are redone. `base` is the base to evaluate on when an evaluation is needed."""

    config: GateConfig = field(default_factory=GateConfig)
    base: str | None = None
    data: str | Path | None = None
    eval_config: EvalConfig = field(default_factory=EvalConfig)

    def __call__(self, registry: Any, name: str, version: int) -> tuple[bool, str]:
        candidate = self.report(registry, name, version)
        if candidate.domain_adapted is None or candidate.domain_base is None:
            return False, f"{name}@{version} has no domain evaluation (evaluate it with --data)"
        metric = candidate.primary_metric
        value = candidate.domain_adapted.primary_value
        forgetting = candidate.forgetting
        f_text = (f"forgetting {forgetting.score:.3f} (ppl {candidate.general.ppl_base:.3f}->"
                  f"{candidate.general.ppl_adapted:.3f}, KL {forgetting.kl_mean:.4f})")
        if forgetting.score > self.config.max_forgetting:
            return False, f"{f_text} > max {self.config.max_forgetting:.3f}"
        reference, label = candidate.domain_base.primary_value, "base"
        current = _production(registry, name)
        if current is not None and current != version:
            held = self.report(registry, name, current, like=candidate)
            if held is None or held.domain_adapted is None or held.domain_adapted.primary != metric:
                return False, (f"production {name}@{current} has no evaluation comparable to {name}@{version}'s "
                               f"(re-run with --data and --base)")
            reference, label = held.domain_adapted.primary_value, f"production {name}@{current}"
        gain = value - reference
        verdict = (f"{metric} {value:.3f} vs {label} {reference:.3f} ({gain:+.3f}, "
                   f"margin {self.config.margin:.3f}); {f_text} <= max {self.config.max_forgetting:.3f}")
        return gain > self.config.margin, verdict

    def report(self, registry: Any, name: str, version: int, like: EvalReport | None = None) -> EvalReport | None:
        """The version's evaluation: the stored one if comparable (to `like`, or to this gate's data),
        else a fresh one, stored on the version. None if none is stored and none can be run."""
        info = registry.resolve(f"{name}@{version}")
        stored = _parse(info.eval_results)
        if stored is not None and self._fits(stored, like):
            return stored
        if self.data is None and like is None:
            if stored is not None:
                return stored
            raise ConfigError(f"{name}@{version} has no stored evaluation; give the gate data to evaluate it on "
                              f"(--data DIR and --base BASE)")
        if self.data is None:
            return None
        from loraops.models import DEFAULT_BASE

        config = dataclasses.replace(self.eval_config, data=self.data)
        fresh = evaluate(self.base or DEFAULT_BASE, registry.fetch(info.ref), config, label=info.ref)
        registry.record_eval(name, version, fresh.to_dict())
        return fresh

    def _fits(self, stored: EvalReport, like: EvalReport | None) -> bool:
        if like is not None:
            return stored.comparable == like.comparable
        if self.base is not None:
            from loraops.models import resolve_base

            if resolve_base(self.base).fingerprint != stored.comparable.get("base_fingerprint"):
                return False
        if self.data is None:
            return True
        from loraops.evals.classify import ClassificationScores, labelled_digest, read_labelled
        from loraops.evals.domain import examples_digest, load_examples

        # The digest is over rendered prompts; rendering chat data needs the tokenizer, plain data does not.
        try:
            if isinstance(stored.domain_adapted, ClassificationScores):
                digest = labelled_digest(*read_labelled(self.data, self.eval_config.max_examples))
            else:
                digest = examples_digest(load_examples(self.data, None, self.eval_config.max_examples))
        except ConfigError:
            return False
        return stored.comparable.get("data_digest") == digest


def _production(registry: Any, name: str) -> int | None:
    try:
        return registry.resolve(f"{name}@{PRODUCTION}").version
    except NotFoundError:
        return None


def _parse(results: dict | None) -> EvalReport | None:
    if not results:
        return None
    try:
        return EvalReport.from_dict(results)
    except (KeyError, TypeError):
        return None
