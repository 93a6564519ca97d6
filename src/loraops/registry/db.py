"""Open the registry database (SQLite or PostgreSQL) and bring its schema to the newest migration.

SQLite: pysqlite's own transaction handling defers BEGIN and commits around DDL, which breaks both
locking and transactional migrations, so we turn it off and emit BEGIN ourselves: `BEGIN IMMEDIATE`
for writes (it takes SQLite's single write lock up front, so two writers serialize instead of
deadlocking on a lock upgrade) and a plain deferred `BEGIN` for reads (WAL lets them run beside a
writer).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from loraops.errors import RegistryError

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "loraops_read_only"  # execution option: begin SQLite transactions deferred
_MIGRATION_LOCK = 0x6C6F72616F7073  # pg advisory lock key ("loraops"): one migrator at a time


def default_url(home: Path) -> str:
    """The registry database: LORAOPS_DB_URL if set, else SQLite in `home`."""
    return os.environ.get("LORAOPS_DB_URL") or f"sqlite:///{home / 'registry.db'}"


def open_database(url: str) -> Engine:
    """An engine for `url`, its schema upgraded to head (safe when many processes open it at once)."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise RegistryError(f"invalid registry database URL {url!r}: {e}") from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(url)
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_pre_ping=True)
    else:
        raise RegistryError(f"unsupported registry database {backend!r}: "
                            f"use sqlite:///PATH or postgresql+psycopg://…")
    try:
        upgrade(engine)
    except OperationalError as e:
        engine.dispose()
        where = make_url(url).render_as_string(hide_password=True)
        cause = " ".join(str(e.orig).split())  # one line: the CLI prints errors as one line
        raise RegistryError(f"cannot open the registry database {where}: {cause}") from e
    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session in one transaction, committed when the block ends (rolled back on error). Pass
    `reader(engine)` for reads: on SQLite they then begin deferred, beside a writer."""
    with Session(engine) as s, s.begin():
        yield s


def reader(engine: Engine) -> Engine:
    return engine.execution_options(**{READ_ONLY: True})


def dialect_insert(s: Session):
    """`insert` of the session's dialect (both have INSERT … ON CONFLICT DO NOTHING)."""
    return postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves (see module docstring)
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=60000"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine) -> None:
    """Upgrade to head inside one locked transaction, so concurrent openers wait instead of racing."""
    cfg = alembic_config()
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE is the lock
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
