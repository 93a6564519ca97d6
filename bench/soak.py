"""Soak: a real `loraops serve` under N minutes of mixed traffic at ~80% of its measured capacity.

1. Capacity: `--max-batch` closed-loop clients send plain greedy completions for --calibrate-s
   seconds; capacity = completed requests/s.
2. Soak: Poisson arrivals at --load (0.8) x capacity for --minutes, over 3 tenants and their
   adapters (and the base), each request one of:
     plain      greedy or seeded sampling, non-streaming            ~45%
     stream     the same as SSE                                      ~30%
     cancelled  a stream closed after 2 chunks, or a non-streaming request whose client
                gives up after 0.2 s                                 ~10%
     bad        a hostile body (NaN, surrogate, unknown or another tenant's model, over-long
                prompt, nested JSON, unsupported field) that must get its 4xx ~15%
3. Report: answers by status and error code; per-minute p50/p99 latency of the good requests and
   their throughput; the server's RSS after warm-up (the first 20% of the soak, at least 1 min when
   the soak is longer than 2 min) and at the end. Verdict: no 5xx, every bad request its 4xx, every
   good one 200, RSS growth after warm-up < 5%.

    .venv/bin/python bench/soak.py --minutes 10                     # the default base (recorded runs)
    .venv/bin/python bench/soak.py --tiny --minutes 1               # a tiny random base (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

KEYS = {"acme": "sk-acme-soak-000001", "beta": "sk-beta-soak-000002", "gamma": "sk-gamma-soak-00003"}
ADMIN, METRICS = "sk-admin-soak-0001", "sk-metrics-soak-01"
PROMPTS = ["Classify this support ticket: the invoice total is wrong", "Extract vendor and total: Acme GmbH, 99.50 EUR",
           "Summarise: the customer asks for a corrected copy before the end of the month", "Hello, how can I"]
BAD = [  # (raw body or JSON, the status it must get)
    (b'{"model": "%s", "prompt": "x", "temperature": NaN}', 400),
    (b'{"model": "%s", "prompt": "a\\ud800b"}', 400),
    (b'{"model": "%s", "prompt": "x", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400),
    (b'{"model": "%s", "prompt": "x", "suffix": "y"}', 400),           # refused by name (no FIM)
    (b'{"model": "%s", "prompt": "x", "top_p": 5e-324}', 400),
    (b'{"model": "nobody-adapter", "prompt": "x"}', 404),
    (b'{"model": "%s", "prompt": "' + b"word " * 100_000 + b'"}', 400),
    (b'{not json', 400),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(work: Path, base: str | None, adapters_per_tenant: int) -> tuple[str, dict[str, list[str]], list[str]]:
    """-> (base spec, tenant -> adapter names, --adapter args): random rank-8 q/v adapters."""
    import torch
    from transformers import AutoModelForCausalLM

    from loraops.lora import Adapter, LoRAConfig, ModuleLoRA, save_adapter, select_targets
    from loraops.models import resolve_base

    if base is None:                                       # --tiny: a random tiny Llama (tests/tiny.py)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import save_tiny
        base = str(save_tiny(work / "tiny", "llama"))
    info = resolve_base(base, progress=True)
    model = AutoModelForCausalLM.from_pretrained(info.path)
    names, args = {}, []
    for t, tenant in enumerate(KEYS):
        names[tenant] = []
        for i in range(adapters_per_tenant):
            g = torch.Generator().manual_seed(100 * t + i)
            cfg = LoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
            mods = {p: ModuleLoRA(torch.randn(8, model.get_submodule(p).in_features, generator=g) * 0.02,
                                  torch.randn(model.get_submodule(p).out_features, 8, generator=g) * 0.02, 2.0)
                    for p in select_targets(model, cfg)}
            name = f"{tenant}-{i}"
            meta = {"base_fingerprint": info.fingerprint, "base_name": info.name}
            args += ["--adapter", f"{name}={save_adapter(Adapter(cfg, mods, {}, meta), work / name)}"]
            names[tenant].append(name)
    (work / "tenants.toml").write_text("".join(
        f'[tenants.{t}]\napi_keys = ["{k}"]\nadapters = {json.dumps(names[t])}\nallow_base = {str(t == "gamma").lower()}\n\n'
        for t, k in KEYS.items()))
    return base, names, args


class Soak:
    def __init__(self, url: str, names: dict[str, list[str]], max_tokens: int, base_name: str, seed: int):
        self.url, self.names, self.max_tokens, self.base_name = url, names, max_tokens, base_name
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.results: list[dict] = []          # {"t", "kind", "status", "code", "latency", "ok"}

    def _model(self, tenant: str) -> str:
        if tenant == "gamma" and self.rng.random() < 0.3:
            return self.base_name
        return self.rng.choice(self.names[tenant])

    def one(self, kind: str, t0: float) -> None:
        tenant = self.rng.choice(list(KEYS))
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
        body = {"model": self._model(tenant), "prompt": self.rng.choice(PROMPTS), "max_tokens": self.max_tokens,
                "temperature": self.rng.choice([0, 0.8]), "seed": self.rng.randrange(1000)}
        start, status, code, expected = time.monotonic(), None, None, 200
        try:
            if kind == "bad":
                raw, expected = self.rng.choice(BAD)
                raw = raw.replace(b"%s", body["model"].encode()) if b"%s" in raw else raw
                r = httpx.post(self.url + "/v1/completions", content=raw, timeout=120,
                               headers={**headers, "Content-Type": "application/json"})
                status, code = r.status_code, _code(r)
            elif kind in ("stream", "cancelled") and (kind == "stream" or self.rng.random() < 0.5):
                with httpx.stream("POST", self.url + "/v1/completions", json={**body, "stream": True},
                                  headers=headers, timeout=120) as r:
                    status = r.status_code
                    for i, line in enumerate(r.iter_lines()):
                        if kind == "cancelled" and i >= 2:
                            status = "cancelled"
                            break
                        if line.startswith("data: {") and '"error"' in line[:20]:
                            code = json.loads(line[6:])["error"]["code"]
            elif kind == "cancelled":
                try:
                    httpx.post(self.url + "/v1/completions", json=body, headers=headers, timeout=0.2)
                    status = 200                              # finished within 0.2 s: fine too
                except httpx.TimeoutException:
                    status = "cancelled"
            else:
                r = httpx.post(self.url + "/v1/completions", json=body, headers=headers, timeout=120)
                status, code = r.status_code, _code(r)
        except httpx.HTTPError as e:
            status, code = "transport", type(e).__name__
        latency = time.monotonic() - start
        ok = status == expected or (kind == "cancelled" and status in ("cancelled", 200))
        with self.lock:
            self.results.append({"t": start - t0, "kind": kind, "status": status, "code": code,
                                 "latency": latency, "ok": ok})


def _code(r: httpx.Response) -> str | None:
    try:
        return r.json().get("error", {}).get("code") if r.status_code >= 400 else None
    except ValueError:
        return "not-json"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def capacity(soak: Soak, clients: int, seconds: float) -> float:
    stop, done = time.monotonic() + seconds, []

    def loop():
        while time.monotonic() < stop:
            soak.one("plain", 0.0)
            done.append(1)
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    soak.results.clear()
    return len(done) / (time.monotonic() - t0)


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="loraops-soak-"))
    base, names, adapter_args = setup(work, None if args.tiny else args.base, args.adapters)
    port = free_port()
    log = open(work / "server.log", "w")
    cmd = [str(Path(sys.executable).with_name("loraops")), "serve", "--base", base, "--tenants",
           str(work / "tenants.toml"), "--admin-key", ADMIN, "--metrics-key", METRICS, "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-slots", str(args.slots), "--max-prompt-chars", "20000",
           *adapter_args, *(["--threads", str(args.threads)] if args.threads else [])]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LORAOPS_HOME": str(work)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        base_name = httpx.get(url + "/ready", headers={"Authorization": f"Bearer {METRICS}"}).json()["base"]
        soak = Soak(url, names, args.max_tokens, base_name, args.seed)
        cap = capacity(soak, args.max_batch, args.calibrate_s)
        rate = args.load * cap
        print(f"capacity {cap:.2f} req/s (closed loop, {args.max_batch} clients); soaking at {rate:.2f} req/s "
              f"for {args.minutes:g} min", flush=True)
        kinds = ["plain"] * 45 + ["stream"] * 30 + ["cancelled"] * 10 + ["bad"] * 15
        t0, end = time.monotonic(), time.monotonic() + 60 * args.minutes
        warm_until = t0 + (max(60.0, 0.2 * 60 * args.minutes) if args.minutes > 2 else 0.2 * 60 * args.minutes)
        rss, threads, next_at = [], [], t0
        while (now := time.monotonic()) < end:
            if now >= next_at:
                th = threading.Thread(target=soak.one, args=(soak.rng.choice(kinds), t0), daemon=True)
                th.start()
                threads.append(th)
                next_at += soak.rng.expovariate(rate)
            if not rss or now - t0 - rss[-1][0] >= 5:
                rss.append((now - t0, rss_mb(server.pid)))
            time.sleep(min(0.01, max(0.0, next_at - time.monotonic())))
        for th in threads:
            th.join(180)
        rss.append((time.monotonic() - t0, rss_mb(server.pid)))
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS}"}).text
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    return report(soak.results, rss, warm_until - t0, cap, rate, args, metrics, work)


def report(results: list[dict], rss: list[tuple[float, float]], warm_s: float, cap: float, rate: float, args,
           metrics: str, work: Path) -> dict:
    by = Counter(f"{r['kind']}:{r['status']}" + (f":{r['code']}" if r["code"] else "") for r in results)
    good = [r for r in results if r["kind"] in ("plain", "stream") and r["status"] == 200]
    windows = []
    for m in range(int(args.minutes * 60 // args.window_s) + 1):
        lat = sorted(r["latency"] for r in good if m * args.window_s <= r["t"] < (m + 1) * args.window_s)
        if lat:
            windows.append({"from_s": m * args.window_s, "requests": len(lat), "p50_s": statistics.median(lat),
                            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))]})
    after_warm = [mb for t, mb in rss if t >= warm_s]
    growth = (after_warm[-1] / after_warm[0] - 1) if len(after_warm) >= 2 else float("nan")
    server_errors = sum(1 for r in results if isinstance(r["status"], int) and r["status"] >= 500)
    wrong = [r for r in results if not r["ok"]]
    out = {"base": args.base if not args.tiny else "tiny", "minutes": args.minutes, "capacity_req_s": cap,
           "rate_req_s": rate, "requests": len(results), "answers": dict(sorted(by.items())),
           "server_errors": server_errors, "wrong_answers": len(wrong), "windows": windows,
           "rss_mb": {"after_warmup": after_warm[0] if after_warm else None, "end": rss[-1][1],
                      "growth": growth}, "server_log": str(work / "server.log"),
           "ok": server_errors == 0 and not wrong and growth < 0.05}
    worst = Counter(f"{r['kind']}:{r['status']}" for r in wrong).most_common(5)
    print(f"\n{len(results)} requests, {server_errors} 5xx, {len(wrong)} wrong answers {worst or ''}")
    for k, v in out["answers"].items():
        print(f"  {k:<48} {v}")
    print("window     requests   p50 s    p99 s")
    for w in windows:
        print(f"  {w['from_s']:>6.0f}s  {w['requests']:>7}  {w['p50_s']:>7.3f}  {w['p99_s']:>7.3f}")
    print(f"RSS after warm-up {out['rss_mb']['after_warmup']:.0f} MB, at the end {out['rss_mb']['end']:.0f} MB "
          f"({growth:+.1%}; target < +5%)")
    print("verdict:", "OK" if out["ok"] else "FAILED")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--tiny", action="store_true", help="a tiny random base instead (smoke test)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.8, help="share of the measured capacity to offer")
    p.add_argument("--calibrate-s", type=float, default=30.0)
    p.add_argument("--adapters", type=int, default=4, help="adapters per tenant (3 tenants)")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="server torch threads")
    p.add_argument("--window-s", type=float, default=60.0, help="latency window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    args = p.parse_args()
    sys.exit(0 if run(args)["ok"] else 1)


if __name__ == "__main__":
    main()
