"""The fine-tuning tables (registry/models.py: ft_files, ft_jobs, ft_events, ft_checkpoints) and the
job queue over them. The server, the workers and the job processes all go through FineTuneStore.

Files. The bytes go to a content-addressed BlobStore in LORAOPS_HOME/files (verified on every read),
the row in the same transaction as the tenant's quota check, so a refused upload stores nothing
and two uploads cannot both squeeze under the quota. A file used by an unfinished job cannot be
deleted; deleting the last row naming a digest deletes its bytes.

The queue. A job is created `validating_files`; a worker claims it, checks its files and sets it
`queued`; a worker claims it again and sets it `running`. Each claim increments `attempts`, takes a
lease (`lease_owner`, `lease_expires_at`) that the worker renews while it works, and returns the
new `attempts` as the claim's token: every write a worker makes checks the token, so a worker
whose lease expired and whose job another worker took (or that was cancelled) can no longer
change it (LeaseLostError). A running job whose lease expired is claimable again: it resumes
from its last checkpoint. Claiming is one transaction: PostgreSQL locks the chosen row with
`FOR UPDATE SKIP LOCKED`, so concurrent workers take different jobs without waiting; SQLite
serialises writers with `BEGIN IMMEDIATE` (registry/db.py), and the UPDATE is conditional on the
row still being as read, on both.

Fair order: jobs whose files need checking first (cheap), then interrupted jobs, then queued jobs
of the tenant with the fewest running jobs, ties to the tenant that started a job least recently,
then the oldest job. So one tenant's long queue cannot starve another's single job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import Session

from loraops import paths
from loraops.finetune.errors import LeaseLostError, QuotaExceededError
from loraops.finetune.ids import TRAINING_FILE, new_id
from loraops.registry.blobs import BlobStore, file_digest
from loraops.registry.db import default_url, dialect_insert, open_database, reader, transaction
from loraops.registry.models import CheckpointRow, EventRow, FileRow, JobRow
from loraops.serve.errors import BadRequestError

ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
MAX_ATTEMPTS = 5       # claims of one job (the file check, then starts and resumes) before it is failed


@dataclass(frozen=True)
class FileRecord:
    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    digest: str
    records: int
    tokens: int
    created_at: int


@dataclass(frozen=True)
class JobRecord:
    id: str
    tenant: str
    status: str
    model: str
    base_name: str
    base_spec: str
    parent: str | None
    training_file: str
    validation_file: str | None
    training_digest: str
    validation_digest: str | None
    suffix: str | None
    seed: int
    user_metadata: dict | None
    hyperparameters: dict
    options: dict
    registry_name: str
    registry_version: int | None
    fine_tuned_model: str | None
    trained_tokens: int | None
    result_file: str | None
    error: dict | None
    report: dict
    created_at: int
    started_at: int | None
    finished_at: int | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: float | None


@dataclass(frozen=True)
class EventRecord:
    id: str
    job_id: str
    created_at: int
    level: str
    type: str
    message: str
    data: dict | None


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    job_id: str
    step: int
    model_id: str
    registry_version: int
    metrics: dict
    created_at: int


@dataclass(frozen=True)
class NewEvent:
    message: str
    data: dict | None = None
    level: str = "info"
    type: str = "message"
    key: str | None = None   # events with a key are recorded once per job (a resumed job repeats steps)


@dataclass(frozen=True)
class Claim:
    job: JobRecord   # as it was claimed: status "validating_files" (check its files) or "running"
    token: int


@dataclass(frozen=True)
class Page:
    items: list
    has_more: bool


def _record(cls, row):
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})


def _now() -> int:
    return int(time.time())


class FineTuneStore:
    """The fine-tuning tables of the registry database at `url` (default: the registry's), file
    bytes under `home`/files."""

    def __init__(self, url: str | None = None, home: str | os.PathLike | None = None) -> None:
        home = Path(home) if home is not None else paths.home()
        self.blobs = BlobStore(home / "files")
        self._engine = open_database(url or default_url(home))
        self._reader = reader(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    # ---- files --------------------------------------------------------------------------------

    def add_file(self, tenant: str, filename: str, src: Path, records: int, tokens: int,
                 max_total_bytes: int | None, purpose: str = TRAINING_FILE) -> FileRecord:
        """Store `src` as a new file of `tenant`, unless its training files would then hold more
        than `max_total_bytes` together (QuotaExceededError; nothing is stored). Result files that
        jobs write (purpose fine-tune-results, max_total_bytes None) count against no quota."""
        size, digest = src.stat().st_size, file_digest(src)
        with self._write() as s:
            self._lock(s, f"tenant:{tenant}")
            if max_total_bytes is not None:
                used = s.scalar(select(func.coalesce(func.sum(FileRow.bytes), 0))
                                .where(FileRow.tenant == tenant, FileRow.purpose == TRAINING_FILE))
                if used + size > max_total_bytes:
                    raise QuotaExceededError(
                        f"this file ({size:,} bytes) would bring your files to {used + size:,} bytes, over your "
                        f"quota of {max_total_bytes:,}; delete files you no longer need")
            self._lock(s, f"blob:{digest}")  # a concurrent delete of the same bytes waits for this row
            self.blobs.put_file(src)
            row = FileRow(id=new_id("file"), tenant=tenant, filename=filename, purpose=purpose, bytes=size,
                          digest=digest, records=records, tokens=tokens, created_at=_now())
            s.add(row)
            s.flush()
            return _record(FileRecord, row)

    def file(self, tenant: str, file_id: str) -> FileRecord | None:
        with self._read() as s:
            row = s.scalars(select(FileRow).where(FileRow.id == file_id, FileRow.tenant == tenant)).one_or_none()
            return _record(FileRecord, row) if row else None

    def list_files(self, tenant: str, after: str | None, limit: int, newest_first: bool = True,
                   purpose: str | None = None) -> Page:
        where = [FileRow.tenant == tenant] + ([FileRow.purpose == purpose] if purpose else [])
        with self._read() as s:
            return self._page(s, FileRow, FileRecord, where, after, limit, newest_first)

    def delete_file(self, tenant: str, file_id: str) -> bool:
        """False if the tenant has no such file. Refused while an unfinished job uses it."""
        with self._write() as s:
            row = s.scalars(select(FileRow).where(FileRow.id == file_id, FileRow.tenant == tenant)).one_or_none()
            if row is None:
                return False
            using = s.scalar(select(JobRow.id).where(
                JobRow.status.in_(ACTIVE), or_(JobRow.training_file == file_id, JobRow.validation_file == file_id))
                .limit(1))
            if using is not None:
                raise BadRequestError(f"file {file_id} is used by fine-tuning job {using}, which has not finished; "
                                      f"cancel the job or wait for it", param="file_id")
            self._lock(s, f"blob:{row.digest}")
            s.delete(row)
            s.flush()
            if s.scalar(select(func.count()).select_from(FileRow).where(FileRow.digest == row.digest)) == 0:
                self.blobs.path(row.digest).unlink(missing_ok=True)
            return True

    def file_bytes(self, digest: str) -> bytes:
        return self.blobs.read_bytes(digest)

    def copy_file(self, digest: str, dest: Path) -> None:
        self.blobs.copy_to(digest, dest)

    # ---- jobs: the API side -------------------------------------------------------------------

    def create_job(self, max_active: int, **fields: Any) -> JobRecord:
        """Insert a job (status validating_files) unless its tenant has `max_active` unfinished jobs."""
        tenant = fields["tenant"]
        with self._write() as s:
            self._lock(s, f"tenant:{tenant}")
            active = s.scalar(select(func.count()).select_from(JobRow)
                              .where(JobRow.tenant == tenant, JobRow.status.in_(ACTIVE)))
            if active >= max_active:
                raise QuotaExceededError(f"you have {active} fine-tuning jobs that have not finished, the most your "
                                         f"quota allows; wait for one to finish or cancel one")
            row = JobRow(id=new_id("ftjob"), status="validating_files", created_at=_now(), attempts=0, report={},
                         **fields)
            s.add(row)
            s.flush()
            self._events(s, row.id, [NewEvent(f"Created fine-tuning job: {row.id}")])
            return _record(JobRecord, row)

    def job(self, tenant: str | None, job_id: str) -> JobRecord | None:
        """The job (only if it is `tenant`'s; any tenant's with None)."""
        with self._read() as s:
            row = s.scalars(select(JobRow).where(JobRow.id == job_id, *self._owned(tenant))).one_or_none()
            return _record(JobRecord, row) if row else None

    def list_jobs(self, tenant: str | None, after: str | None, limit: int) -> Page:
        with self._read() as s:
            return self._page(s, JobRow, JobRecord, self._owned(tenant), after, limit)

    def cancel(self, tenant: str, job_id: str) -> JobRecord | None:
        """Cancel an unfinished job (its worker sees it at its next heartbeat and stops). None if the
        tenant has no such job; BadRequestError if it has finished."""
        with self._write() as s:
            row = s.scalars(select(JobRow).where(JobRow.id == job_id, JobRow.tenant == tenant)
                            .with_for_update()).one_or_none()
            if row is None:
                return None
            if row.status in TERMINAL:
                raise BadRequestError(f"fine-tuning job {job_id} has already {row.status}; it cannot be cancelled",
                                      param="fine_tuning_job_id")
            row.status, row.finished_at, row.lease_owner, row.lease_expires_at = "cancelled", _now(), None, None
            self._events(s, job_id, [NewEvent("Job cancelled", key="cancelled")])
            s.flush()
            return _record(JobRecord, row)

    def list_events(self, job_id: str, after: str | None, limit: int) -> Page:
        with self._read() as s:
            return self._page(s, EventRow, EventRecord, [EventRow.job_id == job_id], after, limit)

    def events(self, job_id: str) -> list[EventRecord]:
        """Every event of a job, oldest first (the dashboard)."""
        with self._read() as s:
            rows = s.scalars(select(EventRow).where(EventRow.job_id == job_id).order_by(EventRow.seq)).all()
            return [_record(EventRecord, r) for r in rows]

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> Page:
        with self._read() as s:
            return self._page(s, CheckpointRow, CheckpointRecord, [CheckpointRow.job_id == job_id], after, limit)

    def model_version(self, tenant: str, model: str) -> tuple[str, int] | None:
        """(registry name, version) that the ft model id `model` of `tenant` names: a succeeded job's
        model or one of its jobs' checkpoints. None for anything else, another tenant's included."""
        with self._read() as s:
            hit = s.execute(select(JobRow.registry_name, JobRow.registry_version).where(
                JobRow.fine_tuned_model == model, JobRow.tenant == tenant, JobRow.status == "succeeded")).first()
            if hit is None:
                hit = s.execute(select(JobRow.registry_name, CheckpointRow.registry_version)
                                .join(JobRow, JobRow.id == CheckpointRow.job_id)
                                .where(CheckpointRow.model_id == model, JobRow.tenant == tenant)).first()
            return (hit[0], hit[1]) if hit else None

    def models(self, tenant: str) -> list[str]:
        """The ft model ids of the tenant's succeeded jobs, oldest first."""
        with self._read() as s:
            return list(s.scalars(select(JobRow.fine_tuned_model).where(
                JobRow.tenant == tenant, JobRow.status == "succeeded").order_by(JobRow.seq)))

    # ---- jobs: the worker side ----------------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> Claim | None:
        """Take the next job in fair order (module docstring) with a lease of `lease_s` seconds."""
        now = time.time()
        with self._write() as s:
            claimable = or_(JobRow.status.in_(["validating_files", "queued"]),
                            and_(JobRow.status == "running", JobRow.lease_expires_at < now))
            candidates = s.execute(select(JobRow.id, JobRow.tenant, JobRow.status, JobRow.seq, JobRow.attempts)
                                   .where(claimable)).all()
            if not candidates:
                return None
            running = dict(s.execute(select(JobRow.tenant, func.count()).where(
                JobRow.status == "running", JobRow.lease_expires_at >= now).group_by(JobRow.tenant)).all())
            last_start = dict(s.execute(select(JobRow.tenant, func.max(JobRow.started_at))
                                        .group_by(JobRow.tenant)).all())
            stage = {"validating_files": 0, "running": 1, "queued": 2}
            for c in sorted(candidates, key=lambda c: (stage[c.status], running.get(c.tenant, 0),
                                                       last_start.get(c.tenant) or 0, c.seq)):
                row = s.scalars(select(JobRow).where(JobRow.id == c.id, JobRow.status == c.status,
                                                     JobRow.attempts == c.attempts)
                                .with_for_update(skip_locked=True)).one_or_none()
                if row is None:  # another worker holds it, or took it since we looked
                    continue
                if row.status == "running" and row.attempts >= MAX_ATTEMPTS:
                    message = (f"workers claimed the job {row.attempts} times (its file check included) and "
                               f"stopped before finishing it each time")
                    self._events(s, row.id, [NewEvent(message, level="error", key="failed")])
                    self._finish(s, row, "failed", error={"code": "worker_lost", "message": message, "param": None})
                    continue
                resumed = row.status == "running"
                row.attempts += 1
                row.lease_owner, row.lease_expires_at = worker, now + lease_s
                if row.status != "validating_files":
                    row.status, row.started_at = "running", row.started_at or int(now)
                    self._events(s, row.id, [NewEvent(
                        f"Resuming the job (start {row.attempts}) on worker {worker}: the previous worker stopped"
                        if resumed else f"Fine-tuning job started on worker {worker}", key=f"start:{row.attempts}")])
                s.flush()
                return Claim(_record(JobRecord, row), row.attempts)
        return None

    def heartbeat(self, job_id: str, token: int, lease_s: float) -> bool:
        """Renew the lease; False if this claim no longer holds the job (cancelled, or taken over)."""
        with self._write() as s:
            renewed = s.execute(JobRow.__table__.update().where(
                JobRow.id == job_id, JobRow.attempts == token, JobRow.status.in_(["validating_files", "running"]))
                .values(lease_expires_at=time.time() + lease_s)).rowcount
            return renewed == 1

    def release(self, job_id: str, token: int) -> None:
        """Give the job back at once (a worker shutting down): another worker resumes it without
        waiting for the lease to expire."""
        with self._write() as s:
            s.execute(JobRow.__table__.update().where(JobRow.id == job_id, JobRow.attempts == token,
                                                      JobRow.status.in_(ACTIVE))
                      .values(lease_owner=None, lease_expires_at=0.0))

    def status(self, job_id: str) -> str | None:
        with self._read() as s:
            return s.scalar(select(JobRow.status).where(JobRow.id == job_id))

    def add_events(self, job_id: str, token: int, events: list[NewEvent]) -> None:
        with self._write() as s:
            self._fenced(s, job_id, token)
            self._events(s, job_id, events)

    def update(self, job_id: str, token: int, events: list[NewEvent] = (), **fields: Any) -> None:
        """Set fields of a job this claim holds (report, registry_version, …), with events."""
        with self._write() as s:
            row = self._fenced(s, job_id, token)
            for key, value in fields.items():
                setattr(row, key, value)
            self._events(s, job_id, list(events))

    def mark_queued(self, job_id: str, token: int) -> None:
        with self._write() as s:
            row = self._fenced(s, job_id, token)
            row.status, row.lease_owner, row.lease_expires_at = "queued", None, None
            self._events(s, job_id, [NewEvent("Files validated, moving job to queued state", key="queued")])

    def add_checkpoint(self, job_id: str, token: int, step: int, model_id: str, version: int,
                       metrics: dict) -> None:
        with self._write() as s:
            self._fenced(s, job_id, token)
            s.execute(self._insert(s)(CheckpointRow).values(
                id=new_id("ftckpt"), job_id=job_id, step=step, model_id=model_id, registry_version=version,
                metrics=metrics, created_at=_now()).on_conflict_do_nothing(index_elements=["job_id", "step"]))
            self._events(s, job_id, [NewEvent(f"Checkpoint created at step {step}: {model_id}",
                                              {"step": step, "model": model_id}, key=f"checkpoint:{step}")])

    def checkpoint_steps(self, job_id: str) -> set[int]:
        with self._read() as s:
            return set(s.scalars(select(CheckpointRow.step).where(CheckpointRow.job_id == job_id)))

    def finish(self, job_id: str, token: int, status: str, events: list[NewEvent] = (), **fields: Any) -> None:
        """End a job this claim holds: succeeded (with fine_tuned_model, …) or failed (with error)."""
        with self._write() as s:
            row = self._fenced(s, job_id, token)
            self._events(s, job_id, list(events))
            self._finish(s, row, status, **fields)

    # ---- internals ------------------------------------------------------------------------------

    def _write(self):
        return transaction(self._engine)

    def _read(self):
        return transaction(self._reader)

    _insert = staticmethod(dialect_insert)

    def _lock(self, s: Session, name: str) -> None:
        """Serialise transactions on `name` until commit. SQLite needs nothing: every write
        transaction already holds the database's one write lock (BEGIN IMMEDIATE)."""
        if s.get_bind().dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    @staticmethod
    def _owned(tenant: str | None) -> list:
        return [JobRow.tenant == tenant] if tenant is not None else []

    def _fenced(self, s: Session, job_id: str, token: int) -> JobRow:
        row = s.scalars(select(JobRow).where(JobRow.id == job_id, JobRow.attempts == token,
                                             JobRow.status.in_(["validating_files", "running"]))
                        .with_for_update()).one_or_none()
        if row is None:
            raise LeaseLostError(f"job {job_id} is no longer held by this worker (cancelled or taken over)")
        return row

    def _events(self, s: Session, job_id: str, events: list[NewEvent]) -> None:
        for e in events:
            stmt = self._insert(s)(EventRow).values(id=new_id("ftevent"), job_id=job_id, created_at=_now(),
                                                    level=e.level, type=e.type, message=e.message, data=e.data,
                                                    key=e.key)
            s.execute(stmt.on_conflict_do_nothing(index_elements=["job_id", "key"]) if e.key else stmt)

    def _finish(self, s: Session, row: JobRow, status: str, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(row, key, value)
        row.status, row.finished_at, row.lease_owner, row.lease_expires_at = status, _now(), None, None

    def _page(self, s: Session, model, record, where: list, after: str | None, limit: int,
              newest_first: bool = True) -> Page:
        query = select(model).where(*where)
        if after is not None:
            seq = s.scalar(select(model.seq).where(model.id == after, *where))
            if seq is None:
                raise BadRequestError(f"after={after!r} is not an object of this list", param="after")
            query = query.where(model.seq < seq if newest_first else model.seq > seq)
        rows = s.scalars(query.order_by(model.seq.desc() if newest_first else model.seq).limit(limit + 1)).all()
        return Page([_record(record, r) for r in rows[:limit]], len(rows) > limit)
