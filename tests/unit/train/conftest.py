import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny  # noqa: E402
from train_data import write_records  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("base") / "llama", "llama")


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("data") / "data.jsonl")
