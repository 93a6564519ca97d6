"""What the registry API returns: plain frozen records, detached from the database session, so the
CLI, the server and the dashboard can keep and print them freely."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any


@dataclasses.dataclass(frozen=True)
class BaseInfo:
    name: str
    fingerprint: str
    source: str | None


@dataclasses.dataclass(frozen=True)
class ParentLink:
    name: str
    version: int
    weight: float


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    digest: str  # sha256 of the manifest: names the whole artifact
    tenant: str | None
    base_fingerprint: str
    dataset_digest: str | None
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    eval_results: dict[str, Any] | None
    parents: tuple[ParentLink, ...]
    created_by: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclasses.dataclass(frozen=True)
class StageEvent:
    stage: str
    version: int
    action: str  # "promote" | "rollback"
    actor: str
    reason: str | None
    at: datetime


@dataclasses.dataclass(frozen=True)
class AdapterSummary:
    name: str
    tenant: str | None
    latest: int | None
    stages: dict[str, int]  # stage -> version holding it now
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class AdapterDetail:
    name: str
    tenant: str | None
    versions: tuple[VersionInfo, ...]
    stages: dict[str, int]
    history: tuple[StageEvent, ...]  # oldest first


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    reason: str | None
    details: dict[str, Any]


def to_json(record: Any) -> Any:
    """A record (or list of records) as JSON-ready data; datetimes become ISO 8601 strings."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (list, tuple)):
        return [to_json(r) for r in record]
    if isinstance(record, dict):
        return {k: to_json(v) for k, v in record.items()}
    if isinstance(record, datetime):
        return record.isoformat()
    return record
