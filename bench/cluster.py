"""Scale-out on Ray Serve (`loraops serve --ray`): adapter-affinity routing vs Ray's default routing,
adapter loads, and the latency the ingress -> replica hop adds to the single-process server.

One trace (bench/serve.py's: Poisson arrivals at --rate, adapters drawn Zipf s = 1.1 over --adapters,
prompts of 20-60 tokens, --min-new..--max-new greedy tokens), replayed in real time over HTTP
(/v1/completions, non-streaming) against real servers started with the CLI:

  affinity    `serve --ray --replicas R --max-slots S`: each request's routing key (its adapter) is Ray
              Serve's multiplexed model id, so it goes to a replica that already holds the adapter
  load-only   the same cluster with --no-affinity: no model id, Ray's default power-of-two-choices
              routing by queue length (what a Ray Serve deployment does without multiplexing)
  single      `serve --max-slots S` (one process), on the hop trace below
  ray-1       `serve --ray --replicas 1 --max-slots S`: the same engine behind the proxy, the ingress
              and the deployment handle; ray-1 minus single is the hop's added latency

Affinity hit rate: slot hits / (hits + misses), summed over the replicas' /metrics. Each request's
adapter is looked up once when a replica admits it: a hit means that replica already held it (a
miss is an adapter load from disk). Reported over the whole trace and after the first --warmup
requests (the cold first touch of each adapter left out), beside the ceiling: the share of the
trace's requests that go to its replicas x slots most requested adapters, what a cluster whose
slots always held exactly those would hit. The hop trace is the first --hop-requests
requests of the same trace, evenly spaced at --hop-rate (low, so that queueing does not hide the hop), after
8 untimed requests; each system's per-request latency measured by the client, p50 and p99. Both run
the engine with --threads-per-replica torch threads.

    .venv/bin/python bench/cluster.py [--base tiny|gemma-3-270m|DIR] [--adapters 128] [--replicas 4]
        [--slots 16] [--requests 2000] [--rate 20] [--warmup 400] [--hop-requests 200] [--hop-rate 2]
        [--replica-cpus C] [--threads-per-replica 1]

--base tiny is a random 2-layer Llama (tests/tiny.py) for smoke runs; figures are recorded on
gemma-3-270m. Ray starts on this machine only (loopback), once per cluster run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT / "tests" / "unit" / "serve")]
from harness import Server  # noqa: E402  (the tests' `loraops serve` subprocess)
from serve import make_adapters, trace  # noqa: E402  (bench/serve.py: the shared trace and adapters)
from tiny import save_tiny  # noqa: E402


def tiny_base(out: Path) -> str:
    return str(save_tiny(out / "tiny", "llama"))


def slot_counts(url: str) -> tuple[float, float]:
    """(slot hits, slot misses) summed over every replica's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"loraops_slot_hits": 0.0, "loraops_slot_misses": 0.0}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        if fam.name in totals:
            totals[fam.name] += sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return totals["loraops_slot_hits"], totals["loraops_slot_misses"]


def start(args, server_args: list[str], log: Path) -> Server:
    """`loraops serve SERVER_ARGS --insecure-no-auth` on 127.0.0.1 (tests/unit/serve/harness.py)."""
    return Server([*server_args, "--insecure-no-auth"], log, env={"RAY_USAGE_STATS_ENABLED": "0"},
                  timeout=args.start_timeout)


def replay(url: str, tr, names: list[str], on_done=None) -> list[float]:
    """Send every request of `tr` at its arrival time; -> each request's latency (s), in trace order.
    on_done(i) is called after request i answers."""
    latency = [0.0] * len(tr)
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
    start = time.perf_counter()

    def one(i: int) -> None:
        arrival, adapter, prompt, new = tr[i]
        time.sleep(max(0.0, start + arrival - time.perf_counter()))
        t0 = time.perf_counter()
        r = client.post(url + "/v1/completions", json={"model": names[adapter], "prompt": prompt, "max_tokens": new,
                                                       "temperature": 0})
        latency[i] = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"request {i} failed: {r.status_code} {r.text[:200]}")
        if on_done is not None:
            on_done(i)
    with ThreadPoolExecutor(256) as pool:
        list(pool.map(one, range(len(tr))))
    client.close()
    return latency


def q(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def cluster_args(args, common: list[str], replicas: int) -> list[str]:
    out = [*common, "--ray", "--replicas", str(replicas), "--threads-per-replica", str(args.threads_per_replica)]
    if args.replica_cpus is not None:
        out += ["--replica-cpus", str(args.replica_cpus)]
    return out


def routing_run(args, common, tr, names, affinity: bool, log: Path) -> dict:
    extra = [] if affinity else ["--no-affinity"]
    server = start(args, cluster_args(args, common, args.replicas) + extra, log)
    warm: dict = {}
    lock = threading.Lock()
    done = [0]

    def on_done(i: int) -> None:
        with lock:
            done[0] += 1
            if done[0] == args.warmup:
                warm["counts"] = slot_counts(server.url)
    try:
        t0 = time.perf_counter()
        lat = replay(server.url, tr, names, on_done)
        wall = time.perf_counter() - t0
        hits, misses = slot_counts(server.url)
    finally:
        server.stop(wait=60)
    wh, wm = warm.get("counts", (0.0, 0.0))
    return {"name": "affinity" if affinity else "load-only", "hit": hits / max(1.0, hits + misses),
            "hit_warm": (hits - wh) / max(1.0, hits - wh + misses - wm),
            "loads_per_1k": 1000 * misses / len(tr), "lat50": statistics.median(lat), "lat99": q(lat, 0.99),
            "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="tiny", help="tiny (random, smoke runs), a known name or an HF dir")
    p.add_argument("--adapters", type=int, default=128)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=400)
    p.add_argument("--hop-requests", type=int, default=200)
    p.add_argument("--hop-rate", type=float, default=2.0)
    p.add_argument("--min-new", type=int, default=4)
    p.add_argument("--max-new", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads-per-replica", type=int, default=1)
    p.add_argument("--replica-cpus", type=float, default=None, help="Ray CPUs per replica (fractional on a "
                                                                     "small box); default: threads per replica")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-routing", action="store_true", help="only the hop latency")
    p.add_argument("--skip-hop", action="store_true", help="only the routing comparison")
    args = p.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

    import torch

    from loraops.models import load_base

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    base = tiny_base(work) if args.base == "tiny" else args.base
    loaded = load_base(base)
    paths = make_adapters(loaded.model, args.adapters, args.rank, work)
    names = [f"ad{i}" for i in range(args.adapters)]
    tr = trace(args.requests, args.adapters, args.rate, loaded.tokenizer, args.seed, args.min_new, args.max_new)
    del loaded
    common = ["--base", base, "--max-slots", str(args.slots), "--max-rank", str(args.rank), "--max-queue", "256",
              *[x for n, path in zip(names, paths) for x in ("--adapter", f"{n}={path}")]]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"base {args.base}, {args.adapters} adapters (Zipf 1.1, rank {args.rank}), {args.replicas} replicas x "
          f"{args.slots} slots, {args.requests} requests at {args.rate:g}/s, {args.min_new}-{args.max_new} new "
          f"tokens; logs in {work}")
    if not args.skip_routing:
        rows = [routing_run(args, common, tr, names, affinity, work / f"{'aff' if affinity else 'load'}.log")
                for affinity in (True, False)]
        print("\n| routing | hit rate | hit rate after warm-up | adapter loads / 1000 req | latency p50 | p99 |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['hit']:.1%} | {r['hit_warm']:.1%} | {r['loads_per_1k']:.0f} | "
                  f"{r['lat50'] * 1e3:.0f} ms | {r['lat99'] * 1e3:.0f} ms |")
        print(f"\nhit rate, affinity / load-only: {rows[0]['hit'] / max(rows[1]['hit'], 1e-9):.2f}x; adapter loads: "
              f"{rows[1]['loads_per_1k'] / max(rows[0]['loads_per_1k'], 1e-9):.1f}x fewer with affinity")
        counts = sorted(Counter(a for _, a, _, _ in tr).values(), reverse=True)
        print(f"ceiling: {sum(counts[:args.replicas * args.slots]) / len(tr):.1%} of this trace's requests are for its "
              f"{args.replicas * args.slots} most requested adapters (all slots of the cluster holding exactly those)")
    if not args.skip_hop:
        hop = [(i / args.hop_rate, a, prompt, new) for i, (_, a, prompt, new) in enumerate(tr[:args.hop_requests])]
        warm_up = [(i / args.hop_rate, a, prompt, new) for i, (_, a, prompt, new) in enumerate(tr[-8:])]
        lat = {}
        for name, server_args in (("single", [*common, "--threads", str(args.threads_per_replica)]),
                                  ("ray-1", cluster_args(args, common, 1))):
            server = start(args, server_args, work / f"{name}.log")
            try:
                replay(server.url, warm_up, names)              # first calls (allocations, kernels): untimed
                lat[name] = replay(server.url, hop, names)
            finally:
                server.stop(wait=60)
        print(f"\nhop: {len(hop)} requests at {args.hop_rate:g}/s, one engine with {args.slots} slots\n")
        print("| server | latency p50 | p99 |\n|---|---|---|")
        for name, xs in lat.items():
            print(f"| {name} | {statistics.median(xs) * 1e3:.1f} ms | {q(xs, 0.99) * 1e3:.1f} ms |")
        d50 = statistics.median(lat["ray-1"]) - statistics.median(lat["single"])
        d99 = q(lat["ray-1"], 0.99) - q(lat["single"], 0.99)
        diffs = [b - a for a, b in zip(lat["single"], lat["ray-1"])]
        print(f"\nadded by the ingress -> replica hop: p50 {d50 * 1e3:+.1f} ms, p99 {d99 * 1e3:+.1f} ms "
              f"(per request, paired: median {statistics.median(diffs) * 1e3:+.1f} ms)")


if __name__ == "__main__":
    main()
