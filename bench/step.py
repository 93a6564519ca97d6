"""Where an engine decode step's time goes: wall time per step and its breakdown by part.

Builds the serving engine on the base (8 deterministic random adapters, rank 16 on q/k/v/o, as
bench/peers.py uses), starts --batch greedy requests with prompts of --context tokens, lets their
prefills run, then times --steps decode steps (speculation off, so every step is one token per
sequence). Prints:

- the step's median wall time, and the share inside the model's forward (the rest is the engine's
  own work: packing, the forward context, sampling/emission, scheduling);
- a torch-profiler breakdown of the forward by part (the module hooks below label each part) and
  by operator kind, and "dispatch": wall time inside a part that no operator accounts for
  (Python, module calls, the dispatcher).

Parts are inclusive regions: `lora` is the adapter delta inside each MultiLoRALinear (its base
GEMM excluded), `attention` the attention kernel (cache write, gather, sdpa), `gemm` the base
linears, `head` the output layer, `other` everything else in the forward (norms, rope,
activations, embedding, residuals).

    .venv/bin/python bench/step.py [--batch 16] [--context 100] [--steps 20] [--threads 1]
                                   [--quantize int8] [--compare] [--no-profile]

With --compare, the fast paths of this branch are measured against their references in the same
process, interleaved (`--variant` names in VARIANTS).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from serve import make_adapters   # bench/serve.py

GEMM_OPS = ("aten::mm", "mkldnn::_linear_pointwise", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "aten::_weight_int8pack_mm",
            "quantized::linear_dynamic", "aten::_weight_int4pack_mm_for_cpu", "aten::_int_mm", "aten::baddbmm")
ATTN_OPS = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_attention_math", "aten::softmax", "aten::_softmax")


def budget(args) -> int:
    """New tokens each request may take: the warm-up, the timed and the profiled steps."""
    return 2 * args.steps + 8


def build_engine(base, paths, args):
    from loraops.models import LoadedBase
    from loraops.serve.engine import Engine, EngineConfig

    loaded = LoadedBase(copy.deepcopy(base.model), base.tokenizer, base.info)
    if args.quantize == "int8":
        from loraops.models.quantize import quantize_for_inference_

        quantize_for_inference_(loaded.model, loaded.tokenizer)
    engine = Engine(loaded, EngineConfig(max_slots=len(paths), max_rank=16, max_batch=args.batch,
                                         max_kv_tokens=args.batch * (args.context + budget(args) + 16),
                                         max_tokens_cap=4096, speculate=0))
    engine.eos_ids = set()
    if args.decoder:
        from loraops.serve.decoder import install_decoder

        assert install_decoder(engine.model) is not None
    names = [engine.add_adapter(f"a{i}", p).model_id for i, p in enumerate(paths)]
    return engine, names


def start_decoding(engine, names, base, args) -> None:
    """--batch requests (adapters round-robin, one bare-base row in 8) past their prefill."""
    from loraops.serve.sampling import SamplingParams

    g = torch.Generator().manual_seed(0)
    vocab = base.tokenizer.vocab_size
    for i in range(args.batch):
        prompt = [2] + torch.randint(1000, vocab - 1000, (args.context - 1,), generator=g).tolist()
        model = base.info.name if i % 8 == 7 else names[i % len(names)]
        engine.submit("bench", model, prompt, SamplingParams(budget(args), temperature=0.0), lambda ev: None)
    while any(s.computed == 0 for s in engine.running) or len(engine.queue):
        engine.step()
    for _ in range(2):                                        # warm-up decode steps
        engine.step()


class Parts:
    """Forward hooks that open a profiler region per part (and time the whole forward)."""

    def __init__(self, engine):
        from loraops.serve.layers import MultiLoRALinear

        self.handles, self.forward_s = [], []
        model = engine.model
        head = model.get_output_embeddings()
        for m in model.modules():
            if isinstance(m, MultiLoRALinear):
                self._wrap_lora(m)
            elif m is head:
                self._region(m, "head")
            elif m in engine.attn_modules:
                pass
        for m in engine.attn_modules:
            self._patch_attention(m)
        self._region_timed(model)

    def _region(self, module, name):
        stack = []

        def pre(mod, inp):
            stack.append(torch.profiler.record_function(name))
            stack[-1].__enter__()

        def post(mod, inp, out):
            stack.pop().__exit__(None, None, None)
        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _wrap_lora(self, layer):
        base = layer.base
        self._region(base, "gemm")
        lora_stack = []

        def pre(mod, inp):
            lora_stack.append(torch.profiler.record_function("lora"))
            lora_stack[-1].__enter__()

        def post(mod, inp, out):
            lora_stack.pop().__exit__(None, None, None)
        # The region "lora" covers the whole wrapper; the nested "gemm" region is subtracted later.
        self.handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]

    def _patch_attention(self, attn):
        from loraops.serve import kv

        def wrapped(*a, **k):
            with torch.profiler.record_function("attention"):
                return original(*a, **k)
        original = kv.paged_attention
        from transformers import AttentionInterface
        AttentionInterface.register(kv.ATTN_NAME, wrapped)

    def _region_timed(self, model):
        t = []

        def pre(mod, args, kwargs):
            t.append(time.perf_counter())

        def post(mod, args, kwargs, out):
            self.forward_s.append(time.perf_counter() - t.pop())
        self.handles += [model.register_forward_pre_hook(pre, with_kwargs=True),
                         model.register_forward_hook(post, with_kwargs=True)]

    def remove(self):
        for h in self.handles:
            h.remove()
        from loraops.serve import kv
        kv.register()


def time_steps(engine, steps: int, cpu: list | None = None) -> list[float]:
    """Wall seconds of each of `steps` engine steps; their CPU seconds (this thread's) appended to
    `cpu`: on a shared machine the CPU time is what the step costs, the wall time what it waited too."""
    out = []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.thread_time()
        engine.step()
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.thread_time() - c0)
    return out


def breakdown(engine, steps: int) -> None:
    """Profile `steps` decode steps; print the per-step ms of each part and operator kind."""
    parts = Parts(engine)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            wall = time_steps(engine, steps)
    finally:
        parts.remove()
    events = prof.key_averages()
    region = {e.key: e.cpu_time_total / 1e3 / steps for e in events if e.key in ("lora", "gemm", "head", "attention")}
    ops = defaultdict(float)
    for e in events:
        if e.key in ("lora", "gemm", "head", "attention") or e.key.startswith("ProfilerStep"):
            continue
        kind = ("gemm" if e.key in GEMM_OPS else "attention-kernel" if e.key in ATTN_OPS else
                "copy/index" if any(w in e.key for w in ("copy", "index", "cat", "gather", "scatter", "select",
                                                         "slice", "view", "reshape", "transpose", "contiguous",
                                                         "to", "empty", "zeros", "fill", "clone", "as_strided"))
                else "elementwise/other")
        ops[kind] += e.self_cpu_time_total / 1e3 / steps
    step = statistics.median(wall) * 1e3
    fwd = statistics.median(parts.forward_s) * 1e3
    lora_only = region.get("lora", 0) - region.get("gemm", 0)
    print(f"profiled step {step:7.1f} ms (profiler on); forward {fwd:7.1f} ms; engine outside the forward "
          f"{step - fwd:6.1f} ms")
    print("  parts of the forward (inclusive ms per step):")
    for name, ms in (("gemm (base linears in the body)", region.get("gemm", 0)), ("lora (adapter deltas)", lora_only),
                     ("attention (cache write + gather + sdpa)", region.get("attention", 0)),
                     ("head", region.get("head", 0))):
        print(f"    {name:<42} {ms:7.1f}")
    rest = fwd - region.get("lora", 0) - region.get("attention", 0) - region.get("head", 0)
    print(f"    {'other (norms, rope, act, residual, embed)':<42} {rest:7.1f}")
    print("  operators, self time (ms per step):")
    for kind, ms in sorted(ops.items(), key=lambda kv: -kv[1]):
        print(f"    {kind:<42} {ms:7.1f}")
    busy = sum(ops.values())
    print(f"    {'not in any operator (Python, dispatch)':<42} {step - busy:7.1f}")
    n_ops = sum(e.count for e in events if not e.key.startswith(("lora", "gemm", "head", "attention")))
    print(f"  operator calls per step: {n_ops / steps:.0f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quantize", choices=["none", "int8"], default="none")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--decoder", action="store_true", help="the engine with serve/decoder.py's ServeDecoder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from loraops.models import load_base

    base = load_base(args.base)
    print(f"# {platform.machine()} {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, torch "
          f"{torch.__version__}; {args.base} {args.quantize}, {args.batch} sequences at ~{args.context} tokens, "
          f"8 adapters rank 16 q/k/v/o")
    with tempfile.TemporaryDirectory() as d:
        paths = make_adapters(base.model, 8, 16, Path(d), ["q_proj", "k_proj", "v_proj", "o_proj"])
        engine, names = build_engine(base, paths, args)
        with torch.no_grad():
            start_decoding(engine, names, base, args)
            cpu = []
            wall = time_steps(engine, args.steps, cpu)
            print(f"decode step: median {statistics.median(wall) * 1e3:.1f} ms wall, {statistics.median(cpu) * 1e3:.1f} "
                  f"ms CPU (min {min(cpu) * 1e3:.1f}) over {args.steps} steps "
                  f"({args.batch / statistics.median(cpu):.1f} tok/s of CPU time)")
            if not args.no_profile:
                breakdown(engine, args.steps)


if __name__ == "__main__":
    main()
