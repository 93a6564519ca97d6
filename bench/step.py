"""Where an engine decode step's time goes, and the same step on another source tree (before/after).

Builds the serving engine on the base with 8 deterministic random adapters (rank 16 on q/k/v/o, as
bench/peers.py), starts --batch greedy requests (adapters round-robin, one row in 8 on the bare
base) with prompts of --context tokens, runs their prefills, then times decode steps (speculation
off: one token per sequence per step). Each measurement runs in its own process; with
`--against SRC` the same measurement also runs on the loraops package in SRC (e.g. a checkout of
main: `git archive main src | tar -x -C /tmp/main`, then `--against /tmp/main/src`), the two alternated
--repeat times, so both see the same machine load. Prints, per tree:

- the median step time as CPU time of the engine thread (what the step costs; on a shared machine
  the wall time also holds the time it waited for a core) and as wall time;
- the step's CPU time by part (module hooks): `gemm` (the base linears of the body), `lora` (the
  adapter deltas, their base GEMM excluded), `attention` (cache write, gather, attention), `head`
  (the output layer), `other` (the rest of the forward: norms, rotary, activations, residuals,
  embedding, module calls), `engine` (scheduling, packing, postprocessing: outside the forward);
- from the torch profiler: operator calls per step, the time inside operators and outside them
  (Python, dispatch), and the top operators.

    .venv/bin/python bench/step.py [--batch 16] [--context 100] [--steps 12] [--threads 1]
                                   [--quantize int8] [--no-decoder] [--against SRC] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

PARTS = ("gemm", "lora", "attention", "head")


def child(args) -> dict:
    """One measurement in this process (the loraops on sys.path): -> figures as a dict."""
    from loraops.models import LoadedBase, load_base
    from loraops.serve.config import EngineConfig
    from loraops.serve.engine import Engine
    from loraops.serve.sampling import SamplingParams

    sys.path.insert(0, str(Path(__file__).parent))
    from serve import make_adapters

    torch.set_num_threads(args.threads)
    base = load_base(args.base)
    budget = args.steps * (2 + (not args.no_profile)) + 8                       # new tokens per request
    with tempfile.TemporaryDirectory() as d:
        paths = make_adapters(base.model, 8, 16, Path(d), ["q_proj", "k_proj", "v_proj", "o_proj"])
        loaded = LoadedBase(copy.deepcopy(base.model), base.tokenizer, base.info)
        if args.quantize == "int8":
            from loraops.models.quantize import quantize_for_inference_

            quantize_for_inference_(loaded.model, loaded.tokenizer)
        cfg = dict(max_slots=8, max_rank=16, max_batch=args.batch, max_tokens_cap=4096, speculate=0,
                   max_kv_tokens=args.batch * (args.context + budget + 16))
        if hasattr(EngineConfig(), "decoder"):
            cfg["decoder"] = not args.no_decoder
        engine = Engine(loaded, EngineConfig(**cfg))
        names = [engine.add_adapter(f"a{i}", p).model_id for i, p in enumerate(paths)]
        g = torch.Generator().manual_seed(0)
        for i in range(args.batch):
            prompt = [2] + torch.randint(1000, 200_000, (args.context - 1,), generator=g).tolist()
            engine.submit("bench", base.info.name if i % 8 == 7 else names[i % len(names)], prompt,
                          SamplingParams(budget, temperature=0.0, **ignore_eos()), lambda ev: None)
        engine.eos_ids.clear()                        # trees without ignore_eos: exactly `budget` tokens
        with torch.no_grad():
            while any(s.computed == 0 for s in engine.running) or len(engine.queue):
                engine.step()
            time_steps(engine, 2)                                               # warm-up
            cpu = []
            wall = time_steps(engine, args.steps, cpu)
            out = {"cpu_ms": statistics.median(cpu) * 1e3, "wall_ms": statistics.median(wall) * 1e3}
            if not args.no_profile:
                out.update(breakdown(engine, args.steps))
    return out


def ignore_eos() -> dict:
    from loraops.serve.sampling import SamplingParams

    return {"ignore_eos": True} if "ignore_eos" in SamplingParams.__dataclass_fields__ else {}


def time_steps(engine, steps: int, cpu: list | None = None) -> list[float]:
    """Wall seconds of each of `steps` engine steps; this thread's CPU seconds appended to `cpu`."""
    out = []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.thread_time()
        engine.step()
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.thread_time() - c0)
    return out


class Regions:
    """CPU time (this thread's) inside the parts of the forward, by module hooks, and in the forward.
    CPU time rather than wall time: on a shared machine a part's wall time also holds the time the
    thread waited for a core."""

    def __init__(self, engine):
        from loraops.serve import kv
        from loraops.serve.layers import MultiLoRALinear

        self.cpu = defaultdict(float)
        self.handles = []
        model = engine.model
        for m in model.modules():
            if isinstance(m, MultiLoRALinear):
                self._region(m, "lora")                   # minus the nested gemm, later
                self._region(m.base, "gemm")
        self._region(model.get_output_embeddings(), "head")
        self._region(model, "forward")
        self.kv, self.original = kv, kv.paged_attention

        def attention(*a, **k):
            c0 = time.thread_time()
            try:
                return self.original(*a, **k)
            finally:
                self.cpu["attention"] += time.thread_time() - c0
        kv.paged_attention = attention                    # the ServeDecoder calls it through the module
        from transformers import AttentionInterface
        AttentionInterface.register(kv.ATTN_NAME, attention)   # transformers' layers through the registry

    def _region(self, module, name):
        stack = []

        def enter(*_):
            stack.append(time.thread_time())

        def leave(*_):
            self.cpu[name] += time.thread_time() - stack.pop()
        self.handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def remove(self):
        for h in self.handles:
            h.remove()
        self.kv.paged_attention = self.original
        self.kv.register()


def breakdown(engine, steps: int) -> dict:
    """Per-step CPU ms of each part over `steps` decode steps (hooks), then operator calls and the
    top operators over as many more (torch profiler: its times are wall times)."""
    regions = Regions(engine)
    cpu = []
    try:
        time_steps(engine, steps, cpu)
    finally:
        regions.remove()
    c = {k: v * 1e3 / steps for k, v in regions.cpu.items()}
    step = sum(cpu) * 1e3 / steps
    parts = {"gemm": c.get("gemm", 0.0), "lora": c.get("lora", 0.0) - c.get("gemm", 0.0),
             "attention": c.get("attention", 0.0), "head": c.get("head", 0.0)}
    parts["other"] = c.get("forward", 0.0) - c.get("lora", 0.0) - parts["attention"] - parts["head"]
    parts["engine"] = step - c.get("forward", 0.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        wall = time_steps(engine, steps)
    ops = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"hooked_step_cpu_ms": step, "parts": parts, "profiled_step_ms": statistics.median(wall) * 1e3,
            "op_ms": sum(e.self_cpu_time_total for e in ops) / 1e3 / steps,
            "op_calls": sum(e.count for e in ops) / steps,
            "top_ops": [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in top]}


def run_child(args, src: str | None, profile: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--base", args.base, "--batch", str(args.batch), "--context",
           str(args.context), "--steps", str(args.steps), "--threads", str(args.threads), "--quantize", args.quantize]
    cmd += ["--no-decoder"] * args.no_decoder + ["--no-profile"] * (not profile)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    src = src or str(Path(__file__).resolve().parents[1] / "src")        # this tree: its own package
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"measurement on {src or 'this tree'} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(label: str, runs: list[dict]) -> dict:
    cpu = statistics.median(r["cpu_ms"] for r in runs)
    wall = statistics.median(r["wall_ms"] for r in runs)
    each = ", ".join(f"{r['cpu_ms']:.0f}" for r in runs)
    print(f"\n## {label}: decode step {cpu:.1f} ms CPU (runs: {each}), {wall:.1f} ms wall")
    prof = [r for r in runs if "parts" in r]
    if prof:
        p = prof[0]
        print(f"   CPU ms per step by part (hooked step {p['hooked_step_cpu_ms']:.1f} ms):  " +
              "  ".join(f"{name} {ms:.1f}" for name, ms in p["parts"].items()))
        print(f"   profiled step {p['profiled_step_ms']:.1f} ms wall: {p['op_calls']:.0f} operator calls, "
              f"{p['op_ms']:.1f} ms inside them, {p['profiled_step_ms'] - p['op_ms']:.1f} ms outside (Python, dispatch)")
        print("   top operators (self wall ms per step, calls): " +
              "; ".join(f"{k} {ms:.1f} ({n:.0f})" for k, ms, n in p["top_ops"]))
    return {"cpu_ms": cpu, "wall_ms": wall}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quantize", choices=["none", "int8"], default="none")
    p.add_argument("--no-decoder", action="store_true", help="transformers' decoder forward, not ServeDecoder")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--against", default=None, help="another tree's src dir to measure alternately (before)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(f"# bench/step.py {time.strftime('%Y-%m-%d %H:%M %Z')} {platform.machine()} "
          f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs, {args.threads} threads, torch "
          f"{torch.__version__}; {args.base} {args.quantize}, {args.batch} sequences at ~{args.context} tokens, "
          f"8 adapters rank 16 q/k/v/o (+1 row in 8 bare)")
    trees = [("this tree", None)] + ([(f"against {args.against}", args.against)] if args.against else [])
    runs = defaultdict(list)
    for r in range(args.repeat):                     # alternated, so both trees see the same load
        for label, src in trees:
            runs[label].append(run_child(args, src, profile=r == 0 and not args.no_profile))
    medians = {label: report(label, runs[label]) for label, _ in trees}
    if args.against:
        a, b = medians["this tree"], medians[f"against {args.against}"]
        print(f"\nthis tree / against: CPU {b['cpu_ms'] / a['cpu_ms']:.2f}x faster, wall {b['wall_ms'] / a['wall_ms']:.2f}x")


if __name__ == "__main__":
    main()
