"""`loraops serve --ray` on a real local Ray cluster: 2 engine replicas and 2 ingress replicas, tiny
models, loopback. The single-process server's checks through the official openai client (tenancy,
streaming, token-identical concurrent outputs, a client going away), adapter affinity, a promotion
reaching both replicas, a tenant's limit held across replicas, admin loads and the fine-tuning API
through the ingress, and a replica killed under load.

One cluster serves the whole module (Ray and four replicas take about a minute to start on two
cores); the test that kills a replica runs last.
"""

import concurrent.futures as cf
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import random_adapter  # noqa: E402
from tiny import save_tiny, tiny_llama  # noqa: E402

from loraops.lora import save_adapter  # noqa: E402

ACME, BETA, LIMITED, ADMIN = "sk-acme-0123456789", "sk-beta-0123456789", "sk-limited-0123456", "admin-key-xyz"
ADAPTERS = [("a", 4, ["q_proj", "v_proj"]), ("b", 8, "all-linear"), ("c", 2, ["o_proj"]), ("d", 4, ["k_proj"]),
            ("e", 3, ["gate_proj", "up_proj"])]
TENANTS = f"""
[tenants.acme]
api_keys = ["{ACME}"]
adapters = ["a", "b", "d", "e", "p", "late", "gone"]

[tenants.beta]
api_keys = ["{BETA}"]
adapters = ["c"]
allow_base = true

[tenants.limited]
api_keys = ["{LIMITED}"]
adapters = ["c"]
allow_base = true
rate_limit = {{ requests_per_minute = 6 }}
"""
PROMPTS = ["Hello", "Invoice number", "The quick brown", "Route this ticket"]


def pg_schema_url():
    """A fresh schema on the test PostgreSQL (LORAOPS_TEST_PG_URL), or None: SQLite then."""
    base_url = os.environ.get("LORAOPS_TEST_PG_URL")
    if not base_url:
        return None, None
    from sqlalchemy import create_engine, make_url, text

    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    return url.render_as_string(hide_password=False), drop


def ready_everywhere(url: str, timeout: float = 120.0) -> None:
    """Each ingress replica answers /ready for itself (its own view of the engine replicas), and the
    proxy picks one per request: wait until ten answers in a row are 200."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 10:
        assert time.monotonic() < deadline, "the ingress replicas did not all become ready"
        streak = streak + 1 if httpx.get(url + "/ready", timeout=10).status_code == 200 else 0
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from loraops.models import fingerprint_dir
    from loraops.registry import Registry

    d = tmp_path_factory.mktemp("cluster")
    home = d / "home"
    base = save_tiny(d / "tiny", "llama")
    meta = {"base_fingerprint": fingerprint_dir(base), "base_name": "tiny"}
    model = tiny_llama(0)
    dirs = {n: str(save_adapter(random_adapter(model, r, t, seed=i, meta=meta), d / n))
            for i, (n, r, t) in enumerate(ADAPTERS)}
    for n, seed in (("late", 21), ("gone", 22)):                     # loaded at run time by the admin route
        dirs[n] = str(save_adapter(random_adapter(model, 3, ["k_proj", "v_proj"], seed=seed, meta=meta), d / n))
    for v, seed in ((1, 11), (2, 12)):
        dirs[f"p{v}"] = str(save_adapter(random_adapter(model, 4, ["q_proj", "o_proj"], seed=seed, meta=meta),
                                         d / f"p{v}"))
    url, drop = pg_schema_url()
    url = url or f"sqlite:///{home / 'registry.db'}"
    reg = Registry(url=url, home=home)
    reg.register_base(meta["base_fingerprint"], "tiny")
    reg.push(dirs["p1"], "p", tenant="acme")
    reg.promote("p", 1)
    (d / "tenants.toml").write_text(TENANTS)
    args = ["--ray", "--replicas", "2", "--replica-cpus", "0.5", "--threads-per-replica", "1",
            "--ingress-replicas", "2", "--ingress-cpus", "0.2", "--base", str(base), "--tenants", str(d / "tenants.toml"),
            "--admin-key", ADMIN, "--registry", "--registry-poll", "1", "--max-slots", "3", "--max-rank", "8",
            "--max-tokens-cap", "64", "--max-batch", "8"]
    for n, _, _ in ADAPTERS:
        args += ["--adapter", f"{n}={dirs[n]}"]
    server = Server(args, d / "server.log", env={"LORAOPS_HOME": str(home), "LORAOPS_DB_URL": url,
                                                 "RAY_USAGE_STATS_ENABLED": "0"}, timeout=360)
    try:
        ready_everywhere(server.url)
        yield {"server": server, "url": server.url, "dirs": dirs, "base": base, "registry": reg}
    finally:
        server.stop(wait=90)
        reg.close()
        if drop is not None:
            drop()


@pytest.fixture(scope="module")
def reference(cluster):
    """The single-process engine on the same base, adapters and limits: texts(jobs) runs `jobs`
    ((model, prompt, max_tokens)) together, greedy, and returns each one's text."""
    from loraops.models import load_base
    from loraops.serve.engine import Engine, EngineConfig
    from loraops.serve.events import TokenEvent
    from loraops.serve.sampling import SamplingParams

    engine = Engine(load_base(str(cluster["base"])), EngineConfig(max_slots=3, max_rank=8, max_tokens_cap=64,
                                                                  max_batch=8))
    for n, _, _ in ADAPTERS:
        engine.add_adapter(n, cluster["dirs"][n])
    engine.add_adapter("p", cluster["dirs"]["p1"])
    engine.add_adapter("late", cluster["dirs"]["late"])
    engine.add_adapter("p@1", cluster["dirs"]["p1"])
    engine.add_adapter("p@2", cluster["dirs"]["p2"])

    def texts(jobs):
        outs = [[] for _ in jobs]
        for out, (model, prompt, max_tokens) in zip(outs, jobs):
            engine.submit("t", model, engine.tokenizer(prompt)["input_ids"],
                          SamplingParams(max_tokens=max_tokens, temperature=0.0), out.append)
        engine.run_until_idle()
        return ["".join(e.text for e in out if isinstance(e, TokenEvent)) for out in outs]
    return texts


def client(cluster, key):
    return openai.OpenAI(base_url=cluster["url"] + "/v1", api_key=key, max_retries=0, timeout=60)


def complete(cluster, key, model, prompt, max_tokens=10):
    return client(cluster, key).completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                                   temperature=0).choices[0].text


def replicas(cluster) -> list[dict]:
    r = httpx.get(cluster["url"] + "/admin/cluster", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["replicas"]


def scrape(cluster) -> list:
    """/metrics as [(name, labels, value)], once the ingress's view of the replicas is current (it is
    refreshed every second: wait two refreshes)."""
    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(2.5)
    text = httpx.get(cluster["url"] + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).text
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples, name: str, **where) -> float:
    return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == x for k, x in where.items()))


def by_label(samples, name: str, label: str, **where) -> dict[str, float]:
    """name's samples matching `where`, summed per value of `label`."""
    out: dict[str, float] = {}
    for n, labels, v in samples:
        if n == name and all(labels.get(k) == x for k, x in where.items()):
            out[labels[label]] = out.get(labels[label], 0.0) + v
    return out


# ---- the single-process server's checks ------------------------------------------------------


def test_ready_with_both_replicas(cluster):
    assert httpx.get(cluster["url"] + "/ready", timeout=10).status_code == 200
    reps = replicas(cluster)
    assert len(reps) == 2 and all(r["alive"] for r in reps) and len({r["pid"] for r in reps}) == 2


def test_models_are_per_tenant_and_another_tenants_adapter_looks_missing(cluster):
    assert sorted(m.id for m in client(cluster, ACME).models.list()) == ["a", "b", "d", "e", "p"]
    assert sorted(m.id for m in client(cluster, BETA).models.list()) == ["c", "tiny"]
    bodies = []
    for model in ("c", "no-such-adapter"):
        r = httpx.post(cluster["url"] + "/v1/completions", headers={"Authorization": f"Bearer {ACME}"},
                       json={"model": model, "prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code == 404
        bodies.append(json.dumps(r.json()).replace(repr(model), "M"))
    assert bodies[0] == bodies[1]


def test_streaming_equals_non_streaming(cluster):
    c = client(cluster, ACME)
    msgs = [{"role": "user", "content": "Route this ticket"}]
    whole = c.chat.completions.create(model="b", messages=msgs, max_tokens=12, temperature=0)
    chunks = list(c.chat.completions.create(model="b", messages=msgs, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_client_that_goes_away_stops_its_generation_on_the_replica(cluster):
    full = client(cluster, ACME).completions.create(model="a", prompt="The quick brown", max_tokens=64, temperature=0)
    assert full.usage.completion_tokens == 64                         # it would run to max_tokens
    before = total(scrape(cluster), "loraops_replica_tokens_total")
    with httpx.stream("POST", cluster["url"] + "/v1/completions", headers={"Authorization": f"Bearer {ACME}"},
                      json={"model": "a", "prompt": "The quick brown", "max_tokens": 64, "temperature": 0,
                            "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break                                                  # one chunk, then hang up
    generated = total(scrape(cluster), "loraops_replica_tokens_total") - before
    assert 1 <= generated < 64


def test_concurrent_mixed_adapter_outputs_equal_the_single_process_engine(cluster, reference):
    jobs = [(m, p, 12) for m in ("a", "b", "d", "e", "p", "a:0.7+b:0.3") for p in PROMPTS[:2]]
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: complete(cluster, ACME, j[0], j[1], j[2]), jobs))
    assert got == reference(jobs)


# ---- routing, registry, limits ---------------------------------------------------------------


def test_an_adapters_requests_keep_landing_on_a_replica_that_holds_it(cluster):
    """4 adapters, 3 slots per replica (so no replica holds all): after a warm-up, every request goes
    to a replica that already holds its adapter — no slot misses, and none to a replica without it."""
    adapters = ["a", "b", "d", "e"]
    misses = total(scrape(cluster), "loraops_slot_misses_total")
    for _ in range(8):                       # warm up until a whole round hits (new keys land at random)
        for m in adapters:
            complete(cluster, ACME, m, "Hello", 2)
            time.sleep(0.3)                  # let Ray's routers learn where each key landed
        before = scrape(cluster)
        if total(before, "loraops_slot_misses_total") == misses:
            break
        misses = total(before, "loraops_slot_misses_total")
    holders = {m: {labels["replica"] for n, labels, _ in before
                   if n == "loraops_cluster_adapter_resident" and labels["model"] == m} for m in adapters}
    jobs = [m for m in adapters for _ in range(6)]
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: complete(cluster, ACME, m, "Invoice number", 4), jobs))
    after = scrape(cluster)
    assert total(after, "loraops_slot_misses_total") == total(before, "loraops_slot_misses_total")  # no reload
    name = "loraops_time_to_first_token_seconds_count"
    for m in adapters:
        was, now = by_label(before, name, "replica", model=m), by_label(after, name, "replica", model=m)
        landed = {r: n - was.get(r, 0.0) for r, n in now.items() if n > was.get(r, 0.0)}
        assert sum(landed.values()) == 6 and set(landed) <= holders[m], (m, landed, holders[m])
    assert total(after, "loraops_cluster_replicas") == 2


def test_a_promotion_reaches_both_replicas_and_pinned_versions_still_serve(cluster, reference):
    reg = cluster["registry"]
    assert complete(cluster, ACME, "p", "Hello", 12) == reference([("p@1", "Hello", 12)])[0]
    reg.push(cluster["dirs"]["p2"], "p", tenant="acme")
    reg.promote("p", 2)
    t0 = time.monotonic()
    while not all(r["production"].get("p") == 2 for r in replicas(cluster)):
        assert time.monotonic() - t0 < 30, replicas(cluster)
        time.sleep(0.5)
    took = time.monotonic() - t0
    assert took < 15, f"the promotion took {took:.1f}s to reach both replicas"
    want = reference([("p@2", "Hello", 12), ("p@1", "Hello", 12)])
    assert complete(cluster, ACME, "p", "Hello", 12) == want[0]
    assert complete(cluster, ACME, "p@1", "Hello", 12) == want[1]         # a pinned version routes by its key


def test_a_tenants_rate_limit_holds_across_replicas(cluster):
    """6 requests per minute, 12 sent at once through two ingress replicas to two engine replicas."""
    def send(i):
        r = httpx.post(cluster["url"] + "/v1/completions", headers={"Authorization": f"Bearer {LIMITED}"},
                       json={"model": "c" if i % 2 else "tiny", "prompt": "Hello", "max_tokens": 2}, timeout=60)
        return r.status_code, r.headers.get("retry-after")
    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(12)))
    assert sorted(s for s, _ in results) == [200] * 6 + [429] * 6
    assert all(int(after) >= 1 for s, after in results if s == 429)
    counted = by_label(scrape(cluster), "loraops_requests_total", "ingress", tenant="limited")
    assert len(counted) == 2 and sum(counted.values()) == 12          # both ingress replicas took some


def test_the_fine_tuning_api_is_served_by_the_ingress(cluster, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Route ticket {i}"},
                                                     {"role": "assistant", "content": "billing"}]}) + "\n"
                            for i in range(12)))
    with open(data, "rb") as f:
        uploaded = client(cluster, ACME).files.create(file=f, purpose="fine-tune")
    assert uploaded.id in {f.id for f in client(cluster, ACME).files.list()}
    assert uploaded.id not in {f.id for f in client(cluster, BETA).files.list()}


def eventually(check, timeout=10.0):
    """Poll `check` until it holds (another ingress replica sees a change at its next view refresh)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.25)


def test_admin_loads_and_unloads_reach_every_replica(cluster, reference):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for name in ("late", "gone"):
        r = httpx.post(cluster["url"] + "/admin/adapters", headers=admin, timeout=120,
                       json={"name": name, "path": cluster["dirs"][name]})
        assert r.status_code == 201, r.text

    def listed():        # /admin/adapters lists what every replica serves
        return {a["name"] for a in httpx.get(cluster["url"] + "/admin/adapters", headers=admin,
                                              timeout=30).json()["adapters"]}
    for _ in range(4):   # both ingress replicas
        eventually(lambda: {"late", "gone"} <= listed())
    assert complete(cluster, ACME, "late", "Hello", 10) == reference([("late", "Hello", 10)])[0]
    assert httpx.delete(cluster["url"] + "/admin/adapters/gone", headers=admin, timeout=30).status_code == 200

    def gone():
        r = httpx.post(cluster["url"] + "/v1/completions", headers={"Authorization": f"Bearer {ACME}"},
                       json={"model": "gone", "prompt": "Hello", "max_tokens": 2}, timeout=30)
        return r.status_code == 404
    for _ in range(4):
        eventually(gone)
    bad = httpx.post(cluster["url"] + "/admin/adapters", headers=admin, timeout=120,
                     json={"name": "broken", "path": str(cluster["base"])})   # not an adapter directory
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "adapter_load_failed"


# ---- failure -----------------------------------------------------------------------------------


def stream_text(cluster, model, prompt, max_tokens, started):
    """A streamed completion: -> ("ok", text) or ("error", status or code); sets `started` at the first token."""
    with httpx.stream("POST", cluster["url"] + "/v1/completions", headers={"Authorization": f"Bearer {ACME}"},
                      json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                            "stream": True}, timeout=60) as r:
        if r.status_code != 200:
            return "error", r.status_code
        text = []
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return "error", event["error"]["code"]
            text.append(event["choices"][0]["text"])
            started.set()
        return "ok", "".join(text)


def test_a_replica_killed_under_load_fails_cleanly_restarts_and_rejoins(cluster, reference):
    import threading

    before = replicas(cluster)
    jobs = [(m, p, 64) for m in ("a", "b", "d", "e") for p in PROMPTS]
    want = dict(zip(jobs, reference(jobs)))
    started = threading.Event()

    def run(i):
        model, prompt, n = jobs[i]
        if i % 2:
            return stream_text(cluster, model, prompt, n, started)
        try:
            return "ok", complete(cluster, ACME, model, prompt, n)
        except openai.APIStatusError as e:
            return "error", e.body.get("code") if isinstance(e.body, dict) else e.status_code
    lost = ("loraops_replica_lost_retries_total", "loraops_replica_lost_failures_total")
    lost_before = sum(total(scrape(cluster), n) for n in lost)
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, i) for i in range(len(jobs))]
        assert started.wait(60)
        deadline = time.monotonic() + 10
        while not (busy := [r for r in replicas(cluster) if r["running"] > 0]):    # one that holds requests
            assert time.monotonic() < deadline
            time.sleep(0.1)
        victim = busy[0]
        os.kill(victim["pid"], signal.SIGKILL)
        outcomes = [f.result(timeout=90) for f in futures]                 # nothing hangs
    for job, (kind, value) in zip(jobs, outcomes):
        if kind == "ok":
            assert value == want[job], job                                 # never another adapter's answer
        else:
            assert value in ("replica_unavailable", 503), (job, value)     # a clean 503
    samples = scrape(cluster)
    assert sum(total(samples, n) for n in lost) > lost_before              # the kill did hit requests
    t0 = time.monotonic()
    while True:                                                            # Serve starts a new replica
        now = replicas(cluster)
        if len(now) == 2 and victim["id"] not in {r["id"] for r in now} and all(r["alive"] for r in now):
            break
        assert time.monotonic() - t0 < 180, now
        time.sleep(1)
    ready_everywhere(cluster["url"])
    newcomer = ({r["id"] for r in now} - {r["id"] for r in before}).pop()
    again = [(m, "Hello", 8) for m in ("a", "b", "d", "e", "late")] * 2    # "late": loaded at run time
    with cf.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda j: complete(cluster, ACME, *j), again))
    assert got == reference(again)
    served = by_label(scrape(cluster), "loraops_time_to_first_token_seconds_count", "replica")
    assert served.get(newcomer, 0) > 0                                     # the new replica serves
