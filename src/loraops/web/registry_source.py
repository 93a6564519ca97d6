"""The dashboard's data from the registry (and, when serving, from the engine's live stats and the
fine-tuning jobs in the registry database)."""

from __future__ import annotations

import time
from typing import Callable

from loraops.errors import InvalidNameError, NotFoundError
from loraops.registry import Registry
from loraops.web.source import AdapterView, JobView, VersionView

MAX_JOBS, MAX_EVENTS = 100, 30


def _curve(points) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points or []]


def _eval_summary(results: dict | None) -> dict | None:
    """The two numbers the dashboard plots from a stored EvalReport (evals/run.py's to_dict)."""
    if not results or results.get("domain_gain") is None:
        return None
    forgetting = results.get("forgetting")
    score = forgetting.get("score") if isinstance(forgetting, dict) else forgetting
    return {"domain_gain": float(results["domain_gain"]), "forgetting": float(score or 0.0),
            "metric": results.get("primary_metric")}


class RegistrySource:
    """DashboardSource over a Registry. `gate` is the promotion gate the CLI would use;
    `stats` returns the serving engine's live numbers (or {} when nothing is serving)."""

    def __init__(self, registry: Registry, gate=None, stats: Callable[[], dict[str, float]] | None = None,
                 jobs=None):
        self.registry, self.gate, self.stats = registry, gate, stats
        self.store = jobs  # a finetune.FineTuneStore, or None: no jobs pages data

    def adapters(self) -> list[AdapterView]:
        return [self.adapter(a.name) for a in self.registry.list_adapters()]

    def adapter(self, name: str) -> AdapterView | None:
        try:
            detail = self.registry.show(name)
        except (NotFoundError, InvalidNameError):      # a name that cannot exist is simply not there
            return None
        stages_of: dict[int, list[str]] = {}
        for stage, number in detail.stages.items():
            stages_of.setdefault(number, []).append(stage)
        versions = [VersionView(
            version=v.version, digest=v.digest, created_at=v.created_at.strftime("%Y-%m-%d %H:%M"),
            created_by=v.created_by, stages=sorted(stages_of.get(v.version, [])),
            parents=[f"{p.name}@{p.version}" for p in v.parents],
            metrics={k: v.metrics[k] for k in ("train_loss", "val_loss") if k in v.metrics},
            eval=_eval_summary(v.eval_results), loss_curve=_curve(v.metrics.get("loss_curve")),
            val_loss_curve=_curve(v.metrics.get("val_loss_curve")),
        ) for v in sorted(detail.versions, key=lambda v: -v.version)]
        return AdapterView(detail.name, detail.tenant, dict(detail.stages), versions)

    def promote(self, name: str, version: int, stage: str, actor: str, reason: str | None) -> None:
        self.registry.promote(name, version, stage, actor=actor, reason=reason, gate=self.gate)

    def rollback(self, name: str, stage: str, actor: str) -> int:
        return self.registry.rollback(name, stage, actor=actor).version

    def serving(self) -> dict[str, float]:
        return self.stats() if self.stats else {}

    def jobs(self) -> list[JobView]:
        if self.store is None:
            return []
        return [_job_view(j) for j in self.store.list_jobs(None, None, MAX_JOBS).items]

    def job(self, job_id: str) -> JobView | None:
        job = self.store.job(None, job_id) if self.store is not None else None
        if job is None:
            return None
        view = _job_view(job)
        events = self.store.events(job_id)
        view.loss_curve = [(e.data["step"], e.data["train_loss"]) for e in events if e.data and "train_loss" in e.data]
        view.val_loss_curve = [(e.data["step"], e.data["valid_loss"]) for e in events
                               if e.data and "valid_loss" in e.data]
        # Every phase's event, but of the per-step losses only the newest: the curve shows the rest.
        losses = [e for e in events if e.type == "metrics"]
        shown = [e for e in events if e.type != "metrics" or e is losses[-1]]
        view.events = [(_when(e.created_at), e.level, e.message) for e in reversed(shown[-MAX_EVENTS:])]
        return view


def _when(unix: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix)) if unix else ""


def _job_view(job) -> JobView:
    version = f"{job.registry_name}@{job.registry_version}" if job.registry_version is not None else None
    return JobView(id=job.id, tenant=job.tenant, status=job.status, model=job.model,
                   created_at=_when(job.created_at), fine_tuned_model=job.fine_tuned_model,
                   registry_version=version, error=(job.error or {}).get("message"), gate=job.report.get("gate"))
