"""The shipped migrations build exactly the schema the models describe, on every backend."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from loraops.registry import Registry
from loraops.registry.models import Base


def test_migrations_match_the_models(registry, db_url):
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_opening_twice_is_a_no_op(registry, db_url, _isolated_home):
    with Registry(url=db_url, home=_isolated_home) as again:
        assert again.list_adapters() == []
