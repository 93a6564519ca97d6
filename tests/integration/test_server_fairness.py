"""Admission under pressure: round-robin across tenants, 503 when the queue is full, auth refusal."""

import concurrent.futures as cf
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import LORAOPS, Server  # noqa: E402
from tiny import save_tiny  # noqa: E402

FLOOD, FAIR = "sk-flood-0123456789", "sk-fair-0123456789"
TENANTS = f"""
[tenants.flood]
api_keys = ["{FLOOD}"]
allow_base = true

[tenants.fair]
api_keys = ["{FAIR}"]
allow_base = true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("fair")
    base = save_tiny(d / "tiny", "llama")
    (d / "tenants.toml").write_text(TENANTS)
    s = Server(["--base", str(base), "--tenants", str(d / "tenants.toml"), "--max-batch", "1",
                "--max-queue", "8"], d / "server.log")
    yield s
    s.stop()


def complete(server, key, max_tokens=20):
    start = time.monotonic()
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "tiny", "prompt": "Hello", "max_tokens": max_tokens, "temperature": 1.0,
                         "seed": 1})
    return r, start, time.monotonic()


def test_a_flooding_tenant_cannot_starve_another(server):
    with cf.ThreadPoolExecutor(8) as pool:
        flood = [pool.submit(complete, server, FLOOD, 120) for _ in range(6)]
        time.sleep(0.3)                                       # the flood is queued behind one running request
        fair = pool.submit(complete, server, FAIR, 120)
        results = [f.result() for f in flood]
        fair_r, fair_start, fair_done = fair.result()
    assert fair_r.status_code == 200 and all(r.status_code == 200 for r, _, _ in results)
    overtaking = sum(fair_start < done < fair_done for _, _, done in results)
    still_queued = sum(done > fair_done for _, _, done in results)
    assert still_queued >= 1, "the flood drained before the fair request arrived: the test proves nothing"
    assert overtaking <= 2, f"{overtaking} flood requests finished while the fair one waited"


def test_a_full_queue_answers_503_with_retry_after(server):
    with cf.ThreadPoolExecutor(16) as pool:
        rs = [r for r, _, _ in pool.map(lambda _: complete(server, FLOOD, 120), range(16))]
    codes = sorted(r.status_code for r in rs)
    assert set(codes) == {200, 503}, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.json()["error"]["code"] == "server_overloaded" and int(busy.headers["Retry-After"]) >= 1


def test_serving_without_tenants_or_insecure_flag_is_refused(tmp_path):
    r = subprocess.run([LORAOPS, "serve", "--base", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "refusing to serve without authentication" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("flag,value,message", [("--speculate", "8", "--speculate must be between 0 and 7"),
                                                ("--speculate-step-tokens", "-1", "must be >= 0"),
                                                ("--max-batch", "0", "--max-batch must be >= 1")])
def test_bad_engine_options_are_refused_in_one_line(tmp_path, flag, value, message):
    r = subprocess.run([LORAOPS, "serve", "--base", str(tmp_path), "--insecure-no-auth", flag, value],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
