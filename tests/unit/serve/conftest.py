import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models are far faster on one thread, and far less fragile on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
