import os
import sys
from pathlib import Path

# Never reach a model hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Converted base models are shared across tests and with the user's own cache (converting takes a minute).
os.environ.setdefault("LORAOPS_MODELS", str(Path.home() / ".loraops" / "models"))
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

IN_CI = os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test fails: a missing PostgreSQL, Chromium or extra must not leave
    the run green with part of the suite unrun."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), where every test must run: {reason}"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own LORAOPS_HOME; the default-base cache is shared (it is expensive)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("LORAOPS_HOME", str(home))
    yield home


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tiny models run faster on one thread, and two threads spin on a busy 2-core machine.
    Tests on the real base (marked slow) keep torch's default."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
