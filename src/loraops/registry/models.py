"""The registry's tables, as SQLAlchemy 2 typed models. Schema changes go through migrations/.

    bases            a base model, identified by its fingerprint
    adapters         a name (unique) and its tenant
    versions         immutable pushes of an adapter, numbered 1, 2, ... per adapter
    lineage          child version -> parent version (+ weight), for merged/composed adapters
    stage_history    every assignment of a stage ("production", "staging") to a version
    audit_log        who did what to which target, when and why
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, UniqueConstraint,
                        event, inspect)
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


MUTABLE_VERSION_FIELDS = {"eval_results"}


@event.listens_for(VersionRow, "before_update")
def _versions_are_immutable(mapper, connection, target: VersionRow) -> None:
    # A version is what was pushed; only its evaluation may be recorded later (record_eval).
    state = inspect(target)
    changed = {a.key for a in state.attrs if a.key in mapper.columns and a.history.has_changes()}
    refused = sorted(changed - MUTABLE_VERSION_FIELDS)
    if refused:
        raise RegistryError(f"versions are immutable; refused to change {refused}")
