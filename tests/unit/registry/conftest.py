"""Registry fixtures: every test runs against SQLite and, where LORAOPS_TEST_PG_URL is set, a real
PostgreSQL (`bash scripts/postgres.sh` prints that URL), each test in a fresh schema."""

from pathlib import Path

import pytest
from databases import db_url  # noqa: F401  (a fixture)

from registry_helpers import FINGERPRINT, make_adapter

from loraops.registry import Registry


@pytest.fixture
def adapter_dir(tmp_path) -> Path:
    return make_adapter(tmp_path / "adapter")


@pytest.fixture
def registry(db_url, _isolated_home, monkeypatch):
    monkeypatch.setenv("LORAOPS_DB_URL", db_url)  # for subprocesses
    reg = Registry(url=db_url, home=_isolated_home)
    yield reg
    reg.close()


@pytest.fixture
def base(registry):
    return registry.register_base(FINGERPRINT, "tiny", actor="tester")
