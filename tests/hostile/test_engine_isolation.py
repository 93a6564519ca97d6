"""The real server over HTTP: one tenant's broken adapter fails only that tenant's requests.

- An adapter whose (finite) weights overflow to inf/NaN in the forward — what gets past any file
  check — answers 500 non_finite_output, while another tenant's requests in the same batches give
  exactly the text they give alone.
- An adapter whose loraops.json is corrupted after registration answers 503 adapter_unavailable
  when it has to be reloaded; the loader keeps loading other adapters and /ready stays 200.
"""

import concurrent.futures as cf
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import random_adapter  # noqa: E402
from tiny import save_tiny, tiny_llama  # noqa: E402

from loraops.lora import save_adapter  # noqa: E402

GOOD, EVIL = "sk-good-0123456789", "sk-evil-0123456789"
TENANTS = f"""
[tenants.good]
api_keys = ["{GOOD}"]
adapters = ["a", "c", "d"]

[tenants.evil]
api_keys = ["{EVIL}"]
adapters = ["overflow"]
"""
PROMPTS = ["Hello there", "The quick brown fox", "Once upon a time in a land"]


@pytest.fixture(scope="module")
def isolation_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("isolation")
    base = save_tiny(d / "tiny", "llama")
    model = tiny_llama(0)
    meta = {"base_name": "tiny"}
    dirs = {n: save_adapter(random_adapter(model, 4, t, seed=i, meta=meta), d / n)
            for i, (n, t) in enumerate([("a", ["q_proj", "v_proj"]), ("c", ["o_proj"]), ("d", ["k_proj"])])}
    huge = random_adapter(model, 4, "all-linear", seed=7, meta=meta)
    for m in huge.modules.values():                   # finite in the file, inf in the first matmul
        m.A.mul_(1e20)
        m.B.mul_(1e20)
    dirs["overflow"] = save_adapter(huge, d / "overflow")
    (d / "tenants.toml").write_text(TENANTS)
    # Two slots: "a" and "overflow" resident (registration order); "c" and "d" load on demand.
    server = Server(["--base", str(base), "--tenants", str(d / "tenants.toml"), "--max-slots", "2",
                     "--max-rank", "8", "--max-batch", "8", "--threads", "1"]
                    + [arg for n in ("a", "overflow", "c", "d") for arg in ("--adapter", f"{n}={dirs[n]}")],
                    d / "server.log")
    yield server, dirs
    server.stop()


def complete(server, key, model, prompt, max_tokens=24):
    return httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})


def test_an_overflowing_adapter_fails_only_its_tenants_requests(isolation_server):
    server, _ = isolation_server
    alone = [complete(server, GOOD, "a", p) for p in PROMPTS]
    assert all(r.status_code == 200 for r in alone), [r.text for r in alone]
    with cf.ThreadPoolExecutor(6) as pool:
        evil = [pool.submit(complete, server, EVIL, "overflow", p) for p in PROMPTS[:2]]
        good = [pool.submit(complete, server, GOOD, "a", p) for p in PROMPTS]
        evil, good = [f.result() for f in evil], [f.result() for f in good]
    for r in evil:
        assert r.status_code == 500, r.text
        assert r.json()["error"]["code"] == "non_finite_output" and r.json()["error"]["type"] == "server_error"
    assert [r.json()["choices"][0]["text"] for r in good] == [r.json()["choices"][0]["text"] for r in alone]
    assert httpx.get(server.url + "/ready", timeout=10).status_code == 200
    again = complete(server, GOOD, "a", PROMPTS[0])
    assert again.json()["choices"][0]["text"] == alone[0].json()["choices"][0]["text"]


def test_a_corrupted_adapter_is_a_503_and_the_loader_keeps_loading(isolation_server):
    server, dirs = isolation_server
    meta = Path(dirs["c"]) / "loraops.json"
    original = meta.read_text()
    meta.write_text("[1]")
    try:
        r = complete(server, GOOD, "c", "Hello", max_tokens=4)
        assert r.status_code == 503 and r.json()["error"]["code"] == "adapter_unavailable", r.text
        assert str(dirs["c"]) not in r.text                      # the reason (with its path) is in the log only
        assert complete(server, GOOD, "d", "Hello", max_tokens=4).status_code == 200   # the loader lives
        assert httpx.get(server.url + "/ready", timeout=10).status_code == 200
    finally:
        meta.write_text(original)
    assert complete(server, GOOD, "c", "Hello", max_tokens=4).status_code == 200
    assert "adapter c could not be loaded" in server.log()
