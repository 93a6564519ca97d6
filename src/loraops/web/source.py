"""What the dashboard shows, as plain data, and the one interface it reads it through.

The dashboard never touches the database itself: a DashboardSource (the registry plus the serving
engine's stats) hands it these views, so the pages are easy to test and to feed from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class VersionView:
    version: int
    digest: str
    created_at: str
    created_by: str
    stages: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)           # "name@version"
    metrics: dict = field(default_factory=dict)                # final training metrics
    eval: dict | None = None                                   # {"domain_gain", "forgetting", ...}
    loss_curve: list[tuple[float, float]] = field(default_factory=list)      # (step, train loss)
    val_loss_curve: list[tuple[float, float]] = field(default_factory=list)  # (step, val loss)


@dataclass
class AdapterView:
    name: str
    tenant: str | None
    stages: dict[str, int] = field(default_factory=dict)       # stage -> version
    versions: list[VersionView] = field(default_factory=list)  # newest first


@dataclass
class JobView:
    """A fine-tuning job (loraops.finetune) as the jobs pages show it."""

    id: str
    tenant: str
    status: str
    model: str
    created_at: str
    fine_tuned_model: str | None = None
    registry_version: str | None = None        # "name@V"
    error: str | None = None
    gate: dict | None = None                   # {"passed", "reason", "promoted", ...}
    loss_curve: list[tuple[float, float]] = field(default_factory=list)      # (step, train loss)
    val_loss_curve: list[tuple[float, float]] = field(default_factory=list)  # (step, val loss)
    events: list[tuple[str, str, str]] = field(default_factory=list)         # (time, level, message), newest first

    @property
    def active(self) -> bool:
        return self.status in ("validating_files", "queued", "running")


class DashboardSource(Protocol):
    def adapters(self) -> list[AdapterView]: ...

    def adapter(self, name: str) -> AdapterView | None: ...

    def promote(self, name: str, version: int, stage: str, actor: str, reason: str | None) -> None: ...

    def rollback(self, name: str, stage: str, actor: str) -> int: ...

    def serving(self) -> dict[str, float]: ...

    def jobs(self) -> list[JobView]: ...               # newest first; loss curves and events left empty

    def job(self, job_id: str) -> JobView | None: ...
