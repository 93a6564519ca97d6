import pytest
from databases import db_url  # noqa: F401  (a fixture)

from loraops.finetune.store import FineTuneStore


@pytest.fixture
def store(db_url, _isolated_home):
    s = FineTuneStore(url=db_url, home=_isolated_home)
    yield s
    s.close()
