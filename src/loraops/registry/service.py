"""The registry's Python API: push immutable adapter versions, move stages, fetch artifacts.

The CLI, the server and the dashboard all go through `Registry`. Every write is one transaction
that also appends to the audit log, so the log cannot miss a change.

Concurrency. Version numbers are max(number) + 1 per adapter, computed while holding a lock that
every writer of that adapter takes first:
  * PostgreSQL: the adapter's row, `SELECT … FOR UPDATE` (the row is created with
    `INSERT … ON CONFLICT DO NOTHING`, which waits for a concurrent creator instead of failing).
    Under READ COMMITTED each statement sees what the previous lock holder committed, so the
    max(number) read after the lock is current.
  * SQLite: every write transaction starts with `BEGIN IMMEDIATE` (db.py), i.e. takes the
    database's single write lock up front; `FOR UPDATE` is not rendered there.
We chose locking over retry-on-unique-violation because it needs no retry loop and no
driver-specific error matching; the unique (adapter_id, number) constraint stays as a backstop.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from loraops import paths
from loraops.atomic import atomic_dir
from loraops.errors import (BaseMismatchError, BlobCorruptError, GateFailedError,
                            NotFoundError, RegistryError, UnregisteredBaseError)
from loraops.registry.blobs import BlobStore, file_digest
from loraops.registry.db import default_url, dialect_insert, open_database, reader, transaction
from loraops.registry.models import (AdapterRow, AuditRow, BaseModelRow, LineageRow, StageRow, VersionRow,
                                     utcnow)
from loraops.registry.names import Ref, check_fingerprint, check_name, check_stage
from loraops.registry.records import (AdapterDetail, AdapterSummary, AuditEntry, BaseInfo, ParentLink,
                                      StageEvent, VersionInfo)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "loraops.json")
PRODUCTION = "production"

Gate = Callable[["Registry", str, int], tuple[bool, str]]


def default_actor() -> str:
    try:
        return os.environ.get("LORAOPS_ACTOR") or getpass.getuser()
    except OSError:  # no login name (some containers)
        return "unknown"


class Registry:
    """Adapter registry over a database URL (default: SQLite in LORAOPS_HOME, or LORAOPS_DB_URL)
    and a blob store in `home`/blobs."""

    def __init__(self, url: str | None = None, home: str | os.PathLike | None = None) -> None:
        self.home = Path(home) if home is not None else paths.home()
        self.url = url or default_url(self.home)
        self.blobs = BlobStore(self.home / "blobs")
        self._engine = open_database(self.url)
        self._reader = reader(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes ------------------------------------------------------------------------------

    def register_base(self, fingerprint: str, name: str, source: str | None = None,
                      actor: str | None = None) -> BaseInfo:
        """Record a base model by fingerprint (idempotent: a known fingerprint keeps its first name)."""
        check_fingerprint(fingerprint)
        with self._write() as s:
            self._ensure_base(s, fingerprint, name, source, actor or default_actor())
            row = s.scalars(select(BaseModelRow).where(BaseModelRow.fingerprint == fingerprint)).one()
            return BaseInfo(row.name, row.fingerprint, row.source)

    def push(self, adapter_dir: str | os.PathLike, name: str, tenant: str | None = None,
             register_base: bool = False, base_fingerprint: str | None = None,
             created_by: str | None = None) -> VersionInfo:
        """Store the adapter in `adapter_dir` as the next version of `name`."""
        check_name(name, "adapter name")
        if tenant is not None:
            check_name(tenant, "tenant")
        from loraops.lora import read_adapter  # torch is heavy: imported only when a push is valid so far

        actor = created_by or default_actor()
        src = Path(adapter_dir)
        meta = read_adapter(src).meta  # validates the format, refuses pickle
        fingerprint = self._fingerprint(src, meta, base_fingerprint)
        if not register_base:
            self._require_base(fingerprint, meta)
        fields = _version_fields(meta)
        # Blobs first, then the row in one transaction: a version never points at missing bytes,
        # and a push killed before the commit leaves only unreferenced blobs behind.
        digest = self._store_files(src)
        with self._write() as s:
            if register_base:
                self._ensure_base(s, fingerprint, meta.get("base_name") or "unnamed", meta.get("base_source"),
                                  actor)
            adapter = self._lock_for_push(s, name, tenant)
            latest = s.scalar(select(func.max(VersionRow.number)).where(VersionRow.adapter_id == adapter.id))
            number = (latest or 0) + 1
            row = VersionRow(adapter=adapter, number=number, digest=digest, base_fingerprint=fingerprint,
                             created_by=actor, **fields)
            s.add(row)
            linked = self._link_parents(s, row, meta.get("parents") or [])
            self._audit(s, actor, "push", f"{name}@{number}", None,
                        {"digest": digest, "base_fingerprint": fingerprint, "tenant": adapter.tenant,
                         "parents": linked})
            s.flush()  # fills created_at and the lineage rows' keys
            return _version_info(row)

    def record_eval(self, name: str, version: int, results: dict[str, Any],
                    actor: str | None = None) -> VersionInfo:
        """Attach evaluation results to a version: the one field a version gains after its push."""
        if not isinstance(results, dict):
            raise RegistryError("evaluation results must be a JSON object (a dict)")
        actor = actor or default_actor()
        with self._write() as s:
            row = self._version(s, self._lock(s, name), version)
            row.eval_results = results
            self._audit(s, actor, "record-eval", f"{name}@{version}", None, {"results": results})
            return _version_info(row)

    def promote(self, name: str, version: int, stage: str = PRODUCTION, actor: str | None = None,
                reason: str | None = None, gate: Gate | None = None, force: bool = False) -> VersionInfo:
        """Point `stage` at `name@version`. A failing `gate` refuses, unless `force` with a reason."""
        check_stage(stage)
        actor = actor or default_actor()
        if force and not reason:
            raise RegistryError("a forced promotion needs a reason (--reason)")
        gate_result = None
        if gate is not None:
            self.resolve(f"{name}@{version}")  # not found beats a gate failure
            # The gate runs outside any transaction: it may be slow and may query this registry.
            ok, why = gate(self, name, version)
            if not ok and not force:
                raise GateFailedError(f"gate refused {name}@{version} for {stage}: {why} "
                                      f"(override with --force --reason)")
            gate_result = {"ok": ok, "reason": why}
        forced = gate_result is not None and not gate_result["ok"]
        with self._write() as s:
            adapter = self._lock(s, name)
            row = self._version(s, adapter, version)
            current = self._current_stage(s, adapter.id, stage)
            if current is not None and current.version_id == row.id:
                return _version_info(row)
            s.add(StageRow(adapter_id=adapter.id, stage=stage, version=row, action="promote", actor=actor,
                           reason=reason, previous_id=current.id if current else None))
            self._audit(s, actor, "force-promote" if forced else "promote", f"{name}@{version}", reason,
                        {"stage": stage, "from": current.version.number if current else None,
                         "gate": gate_result})
            return _version_info(row)

    def rollback(self, name: str, stage: str = PRODUCTION, actor: str | None = None,
                 reason: str | None = None) -> VersionInfo:
        """Give `stage` back to the version that held it before the current one; -> that version.
        Repeated calls keep walking back through the stage's history."""
        check_stage(stage)
        actor = actor or default_actor()
        with self._write() as s:
            adapter = self._lock(s, name)
            current = self._current_stage(s, adapter.id, stage)
            if current is None:
                raise NotFoundError(f"{name} has no {stage} version to roll back")
            if current.previous_id is None:
                raise RegistryError(f"cannot roll back {name}@{stage}: version {current.version.number} "
                                    f"is the first version that held {stage}")
            previous = s.get_one(StageRow, current.previous_id)
            s.add(StageRow(adapter_id=adapter.id, stage=stage, version_id=previous.version_id,
                           action="rollback", actor=actor, reason=reason, previous_id=previous.previous_id))
            self._audit(s, actor, "rollback", f"{name}@{stage}", reason,
                        {"stage": stage, "from": current.version.number, "to": previous.version.number})
            return _version_info(previous.version)

    # ---- reads -------------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionInfo:
        """"name" (production if set, else the latest), "name@3" or "name@staging" -> the version."""
        r = Ref.parse(ref)
        with self._read() as s:
            adapter = self._adapter(s, r.name)
            if r.version is not None:
                return _version_info(self._version(s, adapter, r.version))
            current = self._current_stage(s, adapter.id, r.stage or PRODUCTION)
            if current is not None:
                return _version_info(current.version)
            if r.stage is not None:
                raise NotFoundError(f"{r.name} has no {r.stage} version")
            return _version_info(adapter.versions[-1])  # an adapter row is only ever created with a version

    def fetch(self, ref: str) -> Path:
        """Materialise a version's files (verified) under LORAOPS_HOME/cache/adapters/<digest>/ and
        return that directory, ready for `read_adapter`."""
        digest = self.resolve(ref).digest
        files = json.loads(self.blobs.read_bytes(digest))["files"]
        unexpected = sorted(set(files) - set(ADAPTER_FILES))
        if unexpected:  # the manifest is verified; this guards against our own bugs
            raise BlobCorruptError(f"manifest {digest} names unexpected files {unexpected}")
        target = self.home / "cache" / "adapters" / digest
        if _holds(target, files):
            return target
        try:
            with atomic_dir(target) as tmp:
                for filename, entry in files.items():
                    self.blobs.copy_to(entry["digest"], tmp / filename)
        except OSError:
            if not _holds(target, files):  # a concurrent fetch may have won the rename
                raise
        return target

    def list_adapters(self, tenant: str | None = None) -> list[AdapterSummary]:
        with self._read() as s:
            query = select(AdapterRow).order_by(AdapterRow.name)
            if tenant is not None:
                query = query.where(AdapterRow.tenant == check_name(tenant, "tenant"))
            adapters = s.scalars(query).all()
            latest = dict(s.execute(select(VersionRow.adapter_id, func.max(VersionRow.number))
                                    .group_by(VersionRow.adapter_id)).tuples().all())
            stages: dict[str, dict[str, int]] = {}
            for name, stage, number, _ in self._current_stages(s):
                stages.setdefault(name, {})[stage] = number
            return [AdapterSummary(a.name, a.tenant, latest.get(a.id), stages.get(a.name, {}),
                                   _utc(a.created_at)) for a in adapters]

    def show(self, name: str) -> AdapterDetail:
        with self._read() as s:
            adapter = self._adapter(s, check_name(name, "adapter name"))
            history = s.scalars(select(StageRow).where(StageRow.adapter_id == adapter.id)
                                .order_by(StageRow.id).options(selectinload(StageRow.version))).all()
            stages = {row.stage: row.version.number for row in history}  # the newest row per stage wins
            return AdapterDetail(
                adapter.name, adapter.tenant, tuple(_version_info(v) for v in adapter.versions), stages,
                tuple(StageEvent(r.stage, r.version.number, r.action, r.actor, r.reason, _utc(r.at))
                      for r in history))

    def production_versions(self) -> dict[str, tuple[int, str]]:
        """name -> (version, digest) for every adapter with a production version: one cheap query,
        meant to be polled by the server for hot reload."""
        with self._read() as s:
            return {name: (number, digest) for name, _, number, digest in self._current_stages(s, PRODUCTION)}

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` audit entries, newest first."""
        with self._read() as s:
            rows = s.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)).all()
            return [AuditEntry(_utc(r.at), r.actor, r.action, r.target, r.reason, r.details) for r in rows]

    # ---- internals ---------------------------------------------------------------------------

    def _write(self):
        return transaction(self._engine)

    def _read(self):
        return transaction(self._reader)

    _insert = staticmethod(dialect_insert)

    def _ensure_base(self, s: Session, fingerprint: str, name: str, source: str | None, actor: str) -> None:
        inserted = s.execute(self._insert(s)(BaseModelRow)
                             .values(name=name, fingerprint=fingerprint, source=source, created_at=utcnow())
                             .on_conflict_do_nothing(index_elements=["fingerprint"])).rowcount
        if inserted:
            self._audit(s, actor, "register-base", fingerprint, None, {"name": name, "source": source})

    def _lock_for_push(self, s: Session, name: str, tenant: str | None) -> AdapterRow:
        s.execute(self._insert(s)(AdapterRow).values(name=name, tenant=tenant, created_at=utcnow())
                  .on_conflict_do_nothing(index_elements=["name"]))
        adapter = self._lock(s, name)
        if tenant is not None and adapter.tenant != tenant:
            raise RegistryError(f"adapter {name!r} belongs to tenant {adapter.tenant!r}, not {tenant!r}")
        return adapter

    def _lock(self, s: Session, name: str) -> AdapterRow:
        """The adapter's row, locked until commit: every writer of one adapter goes through here."""
        adapter = s.scalars(select(AdapterRow).where(AdapterRow.name == name).with_for_update()).one_or_none()
        if adapter is None:
            raise NotFoundError(f"no adapter named {name!r} in the registry")
        return adapter

    def _adapter(self, s: Session, name: str) -> AdapterRow:
        adapter = s.scalars(select(AdapterRow).where(AdapterRow.name == name)).one_or_none()
        if adapter is None:
            raise NotFoundError(f"no adapter named {name!r} in the registry")
        return adapter

    def _version(self, s: Session, adapter: AdapterRow, number: int) -> VersionRow:
        row = s.scalars(select(VersionRow).where(VersionRow.adapter_id == adapter.id,
                                                 VersionRow.number == number)).one_or_none()
        if row is None:
            raise NotFoundError(f"{adapter.name} has no version {number}")
        return row

    def _current_stage(self, s: Session, adapter_id: int, stage: str) -> StageRow | None:
        return s.scalars(select(StageRow).where(StageRow.adapter_id == adapter_id, StageRow.stage == stage)
                         .order_by(StageRow.id.desc()).limit(1)).one_or_none()

    def _current_stages(self, s: Session, stage: str | None = None) -> list[tuple[str, str, int, str]]:
        """(adapter name, stage, version number, digest) of the newest assignment of each
        (adapter, stage) pair, optionally for one stage: one query, whatever the history length."""
        newest = select(func.max(StageRow.id)).group_by(StageRow.adapter_id, StageRow.stage)
        if stage is not None:
            newest = newest.where(StageRow.stage == stage)
        return list(s.execute(select(AdapterRow.name, StageRow.stage, VersionRow.number, VersionRow.digest)
                              .join(AdapterRow, AdapterRow.id == StageRow.adapter_id)
                              .join(VersionRow, VersionRow.id == StageRow.version_id)
                              .where(StageRow.id.in_(newest))).tuples().all())

    def _fingerprint(self, src: Path, meta: dict, given: str | None) -> str:
        bound = meta.get("base_fingerprint")
        if bound and given and bound != given:
            raise BaseMismatchError(f"{src} is bound to base {bound}, not to the given "
                                    f"--base-fingerprint {given}")
        fingerprint = bound or given
        if not fingerprint:
            raise UnregisteredBaseError(f"{src} has no base fingerprint (an adapter made by PEFT?): pass "
                                        f"--base-fingerprint FP of the base it was trained on "
                                        f"(`loraops base info`), with --register-base if that base is new "
                                        f"to the registry")
        return check_fingerprint(fingerprint)

    def _require_base(self, fingerprint: str, meta: dict) -> None:
        with self._read() as s:
            known = s.scalar(select(BaseModelRow.id).where(BaseModelRow.fingerprint == fingerprint))
        if known is None:
            raise UnregisteredBaseError(f"base {meta.get('base_name') or '?'} ({fingerprint}) is not "
                                        f"registered; pass --register-base to register it with this push")

    def _store_files(self, src: Path) -> str:
        """Store each adapter file and a manifest as blobs; -> the manifest's digest."""
        files = {}
        for filename in ADAPTER_FILES:
            path = src / filename
            if path.exists():
                files[filename] = {"digest": self.blobs.put_file(path), "size": path.stat().st_size}
        manifest = json.dumps({"files": files}, sort_keys=True, separators=(",", ":")).encode()
        return self.blobs.put_bytes(manifest)

    def _link_parents(self, s: Session, child: VersionRow, parents: list[dict]) -> list[dict]:
        """Lineage rows for parents that are registry versions; parents given as local directories
        (no version) cannot be linked and are only kept in the push's audit entry."""
        linked = []
        for p in parents:
            if p.get("version") is None:
                continue
            adapter = self._adapter(s, check_name(p["name"], "parent name"))
            parent = self._version(s, adapter, int(p["version"]))
            weight = float(p.get("weight", 1.0))
            child.parents.append(LineageRow(parent=parent, weight=weight))
            linked.append({"name": p["name"], "version": parent.number, "weight": weight})
        return linked

    def _audit(self, s: Session, actor: str, action: str, target: str, reason: str | None,
               details: dict) -> None:
        s.add(AuditRow(actor=actor, action=action, target=target, reason=reason, details=details))


def _version_fields(meta: dict) -> dict[str, Any]:
    """The version's record from loraops.json (its types are checked by read_adapter)."""
    return {"dataset_digest": meta.get("dataset_digest"), "hyperparameters": meta.get("hyperparameters") or {},
            "metrics": meta.get("metrics") or {}}


def _holds(directory: Path, files: dict[str, dict]) -> bool:
    """Does `directory` hold exactly these files with these digests?"""
    if not directory.is_dir() or {p.name for p in directory.iterdir()} != set(files):
        return False
    return all(file_digest(directory / name) == entry["digest"] for name, entry in files.items())


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)  # SQLite drops the zone


def _version_info(row: VersionRow) -> VersionInfo:
    return VersionInfo(
        name=row.adapter.name, version=row.number, digest=row.digest, tenant=row.adapter.tenant,
        base_fingerprint=row.base_fingerprint, dataset_digest=row.dataset_digest,
        hyperparameters=dict(row.hyperparameters), metrics=dict(row.metrics),
        eval_results=dict(row.eval_results) if row.eval_results is not None else None,
        parents=tuple(ParentLink(p.parent.adapter.name, p.parent.number, p.weight) for p in row.parents),
        created_by=row.created_by, created_at=_utc(row.created_at))
