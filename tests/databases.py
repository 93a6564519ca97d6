"""The registry database fixture: every test that takes `db_url` runs against SQLite and, where
LORAOPS_TEST_PG_URL is set, a real PostgreSQL (`bash scripts/postgres.sh` prints that URL), each
test in a fresh schema. Import it into a conftest.py to use it there."""

import os
import uuid

import pytest
from sqlalchemy import create_engine, make_url, text

PG_SKIP = ("LORAOPS_TEST_PG_URL is not set: the PostgreSQL registry tests are SKIPPED. "
           "Run `export LORAOPS_TEST_PG_URL=$(bash scripts/postgres.sh)` to include them.")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, _isolated_home):
    if request.param == "sqlite":
        yield f"sqlite:///{_isolated_home / 'registry.db'}"
        return
    base_url = os.environ.get("LORAOPS_TEST_PG_URL")
    if not base_url:
        pytest.skip(PG_SKIP)
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
