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


class DashboardSource(Protocol):
    def adapters(self) -> list[AdapterView]: ...

    def adapter(self, name: str) -> AdapterView | None: ...

    def promote(self, name: str, version: int, stage: str, actor: str, reason: str | None) -> None: ...

    def rollback(self, name: str, stage: str, actor: str) -> int: ...

    def serving(self) -> dict[str, float]: ...
