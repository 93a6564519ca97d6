"""One real server for the hostile HTTP cases (tests/hostile/hostile.py has the helpers)."""

import pytest
from hostile import BETA, BYSTANDER, PROBE, post, serve


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    e = serve(tmp_path_factory.mktemp("hostile"), "server", ["--registry", "--registry-poll", "0.5"])
    e["bystander_text"] = post(e, "/v1/completions", BYSTANDER, key=BETA).json()["choices"][0]["text"]
    e["probe_text"] = post(e, "/v1/completions", PROBE).json()["choices"][0]["text"]
    yield e
    log = e["server"].log()
    e["server"].stop()
    assert "Traceback" not in log, log[-4000:]      # nothing unexpected happened, not even survived and logged
