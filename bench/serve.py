"""Multi-adapter serving throughput and latency: loraops vs PEFT mixed-adapter batches, same trace.

The trace (bench/workload.py) is --trace realistic by default: the demo tenants' extraction
requests (greedy) mixed with varied chat requests (mostly sampled), sent as chat messages through
the chat template, EOS honoured, max_tokens from the data; Poisson arrivals at --rate, adapters by a
Zipf law over N random rank --rank q/v adapters (--adapters 8,32,128). `--trace repetitive` is
the first benchmarks' trace (prefixes of one sentence, greedy, EOS ignored), kept for comparison
only: its outputs loop and n-gram speculation accepts ~90% of drafts there. Systems, same trace:

  loraops          the serving engine with the `loraops serve` defaults (continuous batching, slot
                   pool of --slots adapters, n-gram speculation for greedy rows, int8-screened head)
  loraops-nospec   the same with --speculate 0
  loraops-base     the same engine, every request on the bare base (the cost of LoRA)
  loraops-int8     (--int8) the engine on an int8 base, LoRA fp32 (what `serve --quantize int8` builds)
  peft             PEFT with every adapter loaded; static batches of up to --batch arrived requests,
                   split by sampling settings (one `generate` call has one), `adapter_names` per row,
                   left padding; a batch runs until its last row stops (EOS or its max_tokens), and
                   its requests answer when it ends

Prints tokens/s (generated tokens, EOS included, as `usage` counts; sampled requests make each
system's total its own), requests/s, p50/p99 time to first token and end-to-end latency, ratios to
PEFT and, for int8, to fp32 loraops. The first line after the table is the headline: the
`loraops serve` defaults on this trace. With --repeat R every system runs R times, round-robin,
and each shows its median run.

    .venv/bin/python bench/serve.py [--trace realistic|repetitive] [--base gemma-3-270m]
                                    [--adapters 8,32,128] [--requests 32] [--rate 4] [--threads 2]
                                    [--repeat 3] [--no-peft] [--int8]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import workload  # noqa: E402
from workload import Outcome, summarise  # noqa: E402


def make_adapters(model, n: int, rank: int, out_dir: Path, targets=("q_proj", "v_proj")) -> list[str]:
    """n deterministic random adapters (adapter i from seed i) of `rank` on `targets`, saved in
    PEFT's format under out_dir/ad{i} -> their paths."""
    from loraops.lora import Adapter, LoRAConfig, ModuleLoRA, save_adapter, select_targets

    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        cfg = LoRAConfig(r=rank, alpha=2 * rank, target_modules=list(targets))
        mods = {p: ModuleLoRA(torch.randn(rank, model.get_submodule(p).in_features, generator=g) * 0.02,
                              torch.randn(model.get_submodule(p).out_features, rank, generator=g) * 0.02,
                              cfg.scale(rank, cfg.alpha)) for p in select_targets(model, cfg)}
        paths.append(str(save_adapter(Adapter(cfg, mods), out_dir / f"ad{i}")))
    return paths


def run_loraops(base, paths, tr, slots: int, batch: int, base_only: bool, int8: bool = False,
                speculate: int | None = None) -> dict:
    from loraops.models import LoadedBase
    from loraops.serve.engine import DoneEvent, Engine, EngineConfig, TokenEvent
    from loraops.serve.sampling import SamplingParams

    loaded = LoadedBase(copy.deepcopy(base.model), base.tokenizer, base.info)
    if int8:
        from loraops.models.quantize import quantize_for_inference_

        quantize_for_inference_(loaded.model, loaded.tokenizer)
    spec = {} if speculate is None else {"speculate": speculate}
    engine = Engine(loaded, EngineConfig(max_slots=slots, max_rank=16, max_batch=batch, max_kv_tokens=16384,
                                         max_queue=10_000, max_tokens_cap=max(r.max_tokens for r in tr), **spec))
    if any(r.ignore_eos for r in tr):
        engine.eos_ids.clear()                                 # the repetitive trace: exactly max_tokens each
    names = [] if base_only else [engine.add_adapter(f"ad{i}", p).model_id for i, p in enumerate(paths)]
    engine.start()
    n = len(tr)
    outcomes = [Outcome() for _ in tr]
    finished = threading.Semaphore(0)

    def sink_for(i, arrived):
        def sink(ev):
            if isinstance(ev, TokenEvent) and not outcomes[i].ttft:
                outcomes[i].ttft = time.perf_counter() - arrived
            elif isinstance(ev, DoneEvent):
                outcomes[i].latency, outcomes[i].tokens = time.perf_counter() - arrived, ev.completion_tokens
                finished.release()
        return sink
    encoded = [workload.encode(base.tokenizer, r) for r in tr]
    t0 = time.perf_counter()
    for i, r in enumerate(tr):
        time.sleep(max(0.0, t0 + r.arrival_s - time.perf_counter()))
        params = SamplingParams(r.max_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed)
        engine.submit("bench", base.info.name if base_only else names[r.adapter], encoded[i], params,
                      sink_for(i, time.perf_counter()))
    for _ in range(n):
        finished.acquire()
    wall = time.perf_counter() - t0
    stats = engine.pool.stats
    engine.stop()
    loads = [] if base_only else cold_loads(engine, paths)
    name = ("loraops-base" if base_only else "loraops-int8" if int8 else
            "loraops-nospec" if speculate == 0 else "loraops")
    out = summarise(name, outcomes, wall)
    drafted, accepted = engine.spec_stats
    out["notes"] = f"drafts {accepted}/{drafted} accepted; " if drafted else ""
    out["notes"] += f"hits {stats.hits} misses {stats.misses} evictions {stats.evictions}"
    if loads:
        out["notes"] += f"; cold load p50 {statistics.median(loads) * 1e3:.1f} ms, max {max(loads) * 1e3:.1f} ms"
    return out


def cold_loads(engine, paths) -> list[float]:
    """Seconds to bring each adapter from disk into a slot: read + verify + check against the base
    and pool + copy into the stacked tensors (evicting the least recently used slot when full) —
    what a miss costs, measured on the engine after its run (nothing else running)."""
    out = []
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        engine.pool.load(f"cold-{i}", engine.read_checked(path))
        out.append(time.perf_counter() - t0)
    return out


def run_peft(base, paths, tr, batch: int) -> dict:
    from peft import PeftModel
    from transformers import LogitsProcessor, LogitsProcessorList

    from loraops.evals.generate import stop_ids

    model = PeftModel.from_pretrained(copy.deepcopy(base.model), paths[0], adapter_name="ad0")
    for i, p in enumerate(paths[1:], 1):
        model.load_adapter(p, adapter_name=f"ad{i}")
    model.eval()
    tok = base.tokenizer
    stops = set(stop_ids(base.model, tok))

    class FirstToken(LogitsProcessor):
        def __init__(self):
            self.at = None

        def __call__(self, input_ids, scores):
            self.at = self.at or time.perf_counter()
            return scores
    n = len(tr)
    outcomes = [Outcome() for _ in tr]
    encoded = [workload.encode(tok, r) for r in tr]
    t0 = time.perf_counter()
    arrivals = [t0 + r.arrival_s for r in tr]
    i = 0
    while i < n:
        time.sleep(max(0.0, arrivals[i] - time.perf_counter()))
        now = time.perf_counter()
        j = i + 1
        while j < n and j - i < batch and arrivals[j] <= now:
            j += 1
        groups: dict[tuple, list[int]] = {}                  # one generate() has one sampling setting
        for k in range(i, j):
            groups.setdefault((tr[k].temperature, tr[k].top_p, tr[k].ignore_eos), []).append(k)
        for (temperature, top_p, ignore_eos), rows in groups.items():
            ids = [encoded[k] for k in rows]
            max_new = max(tr[k].max_tokens for k in rows)
            width = max(map(len, ids))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature else \
                dict(do_sample=False)
            ft = FirstToken()
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new,
                                     min_new_tokens=max_new if ignore_eos else 0,
                                     eos_token_id=None if ignore_eos else sorted(stops), pad_token_id=pad,
                                     adapter_names=[f"ad{tr[k].adapter}" for k in rows],
                                     logits_processor=LogitsProcessorList([ft]), **sampling)
            end = time.perf_counter()
            for row, k in zip(out[:, width:].tolist(), rows):
                row = row[:tr[k].max_tokens]                  # the batch may run past this request's own limit
                cut = len(row) if ignore_eos else next((m + 1 for m, t in enumerate(row) if t in stops), len(row))
                outcomes[k] = Outcome(ft.at - arrivals[k], end - arrivals[k], cut)
        i = j
    wall = time.perf_counter() - t0
    return summarise("peft", outcomes, wall)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trace", default="realistic", choices=["realistic", "repetitive"])
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--adapters", default="8,32,128")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--int8", action="store_true", help="also run loraops on an int8 base (serve --quantize int8)")
    p.add_argument("--no-peft", action="store_true", help="skip PEFT (ratios between loraops rows only)")
    p.add_argument("--no-base", action="store_true", help="skip loraops-base (the cost-of-LoRA row)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each system, interleaved; the median is shown")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every system (1: best on a busy CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from loraops.models import load_base

    base = load_base(args.base)
    print(f"# bench/serve.py {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, base {args.base}, trace {args.trace}: {args.requests} requests at "
          f"{args.rate}/s, rank {args.rank} q/v, batch {args.batch}, slots {args.slots}")
    print(f"{'adapters':>8} {'system':>14} {'tok/s':>7} {'req/s':>6} {'TTFT p50':>9} {'p99':>7} {'lat p50':>8} "
          f"{'p99':>7} {'vs peft':>8}  notes")
    for n in [int(x) for x in args.adapters.split(",")]:
        with tempfile.TemporaryDirectory() as d:
            paths = make_adapters(base.model, n, args.rank, Path(d))
            tr = workload.make(args.trace, args.requests, n, args.rate, base.tokenizer, args.seed)
            print(f"# {n} adapters: {workload.describe(tr)}")
            slots = min(args.slots, n)
            systems = [lambda: run_loraops(base, paths, tr, slots, args.batch, False),
                       lambda: run_loraops(base, paths, tr, slots, args.batch, False, speculate=0)]
            if not args.no_base:
                systems.append(lambda: run_loraops(base, paths, tr, slots, args.batch, True))
            if args.int8:
                systems.append(lambda: run_loraops(base, paths, tr, slots, args.batch, False, int8=True))
            if not args.no_peft:
                systems.append(lambda: run_peft(base, paths, tr, args.batch))
            # Round-robin repeats, each system's median run reported: this VM's speed drifts by
            # ±15% over minutes, and interleaving spreads the drift over every system alike.
            runs = [[] for _ in systems]
            for _ in range(args.repeat):
                for i, system in enumerate(systems):
                    runs[i].append(system())
            rows = {r["name"]: r for r in map(median_run, runs)}
        peft = rows["peft"]["tok_s"] if "peft" in rows else float("nan")
        for r in rows.values():
            print(f"{n:>8} {r['name']:>14} {r['tok_s']:>7.1f} {r['req_s']:>6.2f} {r['ttft50']:>8.2f}s "
                  f"{r['ttft99']:>6.2f}s {r['lat50']:>7.2f}s {r['lat99']:>6.2f}s {r['tok_s'] / peft:>7.2f}x  "
                  f"{'errors ' + str(r['errors']) + '; ' if r['errors'] else ''}{r.get('notes', '')}")
        head, nospec = rows["loraops"], rows["loraops-nospec"]
        line = (f"headline, {n} adapters, {args.trace} trace: loraops (serve defaults) {head['tok_s']:.1f} tok/s"
                f" = {head['tok_s'] / peft:.2f}x PEFT; without speculation {nospec['tok_s']:.1f} tok/s"
                f" ({head['tok_s'] / nospec['tok_s']:.2f}x)")
        if "loraops-int8" in rows:
            line += f"; int8 base {rows['loraops-int8']['tok_s'] / head['tok_s']:.2f}x fp32"
        print(line, flush=True)


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s, noting the others' range when there are several."""
    ranked = sorted(runs, key=lambda r: r["tok_s"])
    out = dict(ranked[len(ranked) // 2])
    if len(runs) > 1:
        out["notes"] = (f"median of {len(runs)} (tok/s {ranked[0]['tok_s']:.1f}-{ranked[-1]['tok_s']:.1f}); "
                        + out.get("notes", ""))
    return out


if __name__ == "__main__":
    main()
