import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny  # noqa: E402
from train_data import write_records  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run faster on one thread, and a busy 2-core box makes two threads spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("base") / "llama", "llama")


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("data") / "data.jsonl")
