"""The registry's tables, as SQLAlchemy 2 typed models. Schema changes go through migrations/.

    bases            a base model, identified by its fingerprint
    adapters         a name (unique) and its tenant
    versions         immutable pushes of an adapter, numbered 1, 2, ... per adapter
    lineage          child version -> parent version (+ weight), for merged/composed adapters
    stage_history    every assignment of a stage ("production", "staging") to a version
    audit_log        who did what to which target, when and why

The fine-tuning API's tables (loraops.finetune), in the same database so that a job's queue entry,
its events and the versions it registers live side by side:

    ft_files         uploaded training files (bytes in a content-addressed store), per tenant
    ft_jobs          fine-tuning jobs: the request, the status, and the lease of the worker running
                     it (lease_owner, lease_expires_at; `attempts` numbers the claims and fences
                     writes of a worker that lost its lease)
    ft_events        a job's event log (curation, losses, checkpoints, evaluation, gate, errors)
    ft_checkpoints   servable checkpoints of a job, each a registry version

Their times are integer Unix seconds (lease expiry: float), as the OpenAI objects report them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text,
                        UniqueConstraint, event, inspect)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from loraops.errors import RegistryError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    # Named constraints, so later migrations can drop or alter them (SQLite batch mode needs names).
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s",
    })
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class BaseModelRow(Base):
    __tablename__ = "bases"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(80), unique=True)
    source: Mapped[Optional[str]] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterRow(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[Optional[str]] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[VersionRow]] = relationship(back_populates="adapter", order_by="VersionRow.number")


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("adapter_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the manifest blob
    base_fingerprint: Mapped[str] = mapped_column(ForeignKey("bases.fingerprint"))
    dataset_digest: Mapped[Optional[str]] = mapped_column(String(200))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eval_results: Mapped[Optional[dict[str, Any]]]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    adapter: Mapped[AdapterRow] = relationship(back_populates="versions")
    parents: Mapped[list[LineageRow]] = relationship(foreign_keys="LineageRow.child_id")


class LineageRow(Base):
    __tablename__ = "lineage"

    child_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    weight: Mapped[float] = mapped_column(Float)

    parent: Mapped[VersionRow] = relationship(foreign_keys=[parent_id])


class StageRow(Base):
    """One assignment of `stage` to a version. The newest row per (adapter, stage) is current;
    `previous_id` is the assignment it replaced, so rollback walks back one step per call."""

    __tablename__ = "stage_history"
    __table_args__ = (Index("ix_stage_history_current", "adapter_id", "stage", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    stage: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    previous_id: Mapped[Optional[int]] = mapped_column(ForeignKey("stage_history.id"))
    action: Mapped[str] = mapped_column(String(32))  # "promote" | "rollback"
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[Optional[str]] = mapped_column(String(2000))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    version: Mapped[VersionRow] = relationship()


class AuditRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(200))
    reason: Mapped[Optional[str]] = mapped_column(String(2000))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class FileRow(Base):
    __tablename__ = "ft_files"

    seq: Mapped[int] = mapped_column(primary_key=True)        # list order
    id: Mapped[str] = mapped_column(String(40), unique=True)   # "file-…"
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))            # sha256 of the bytes: the blob's name
    records: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)            # with the server's base tokenizer
    created_at: Mapped[int] = mapped_column(BigInteger)


class JobRow(Base):
    __tablename__ = "ft_jobs"

    seq: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)   # "ftjob-…"
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(400))            # as requested: the base or a model to continue
    base_name: Mapped[str] = mapped_column(String(200))
    base_spec: Mapped[str] = mapped_column(String(1000))       # what workers load (name, dir or .gguf)
    parent: Mapped[Optional[str]] = mapped_column(String(200))  # registry "name@V" the job continues from
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[Optional[str]] = mapped_column(String(40))
    training_digest: Mapped[str] = mapped_column(String(64))
    validation_digest: Mapped[Optional[str]] = mapped_column(String(64))
    suffix: Mapped[Optional[str]] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    user_metadata: Mapped[Optional[dict[str, Any]]] = mapped_column("metadata")
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)  # resolved n_epochs, batch_size, …
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)          # the resolved `loraops` extension
    registry_name: Mapped[str] = mapped_column(String(64))
    registry_version: Mapped[Optional[int]] = mapped_column(Integer)
    fine_tuned_model: Mapped[Optional[str]] = mapped_column(String(400), index=True)
    trained_tokens: Mapped[Optional[int]] = mapped_column(BigInteger)
    result_file: Mapped[Optional[str]] = mapped_column(String(40))
    error: Mapped[Optional[dict[str, Any]]]
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)   # curation, evaluation, gate
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[Optional[int]] = mapped_column(BigInteger)
    finished_at: Mapped[Optional[int]] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[Optional[str]] = mapped_column(String(200))
    lease_expires_at: Mapped[Optional[float]] = mapped_column(Float)


class EventRow(Base):
    __tablename__ = "ft_events"
    # `key` names events that a resumed job would otherwise repeat ("loss:12"); NULLs never collide.
    __table_args__ = (UniqueConstraint("job_id", "key"), Index("ix_ft_events_job", "job_id", "seq"))

    seq: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)   # "ftevent-…"
    job_id: Mapped[str] = mapped_column(ForeignKey("ft_jobs.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))              # info | warn | error
    type: Mapped[str] = mapped_column(String(16))              # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[Optional[dict[str, Any]]]
    key: Mapped[Optional[str]] = mapped_column(String(64))


class CheckpointRow(Base):
    __tablename__ = "ft_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    seq: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)   # "ftckpt-…"
    job_id: Mapped[str] = mapped_column(ForeignKey("ft_jobs.id"))
    step: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(400), unique=True)   # "ft:…:ckpt-step-N"
    registry_version: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[int] = mapped_column(BigInteger)


MUTABLE_VERSION_FIELDS = {"eval_results"}


@event.listens_for(VersionRow, "before_update")
def _versions_are_immutable(mapper, connection, target: VersionRow) -> None:
    # A version is what was pushed; only its evaluation may be recorded later (record_eval).
    state = inspect(target)
    changed = {a.key for a in state.attrs if a.key in mapper.columns and a.history.has_changes()}
    refused = sorted(changed - MUTABLE_VERSION_FIELDS)
    if refused:
        raise RegistryError(f"versions are immutable; refused to change {refused}")
