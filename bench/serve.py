"""Multi-adapter serving throughput and latency: loraops vs PEFT mixed-adapter batches, same trace.

A Poisson arrival trace (rate --rate requests/s) whose adapters follow a Zipf law (s = 1.1) over
N adapters (--adapters 8,32,128; rank --rank on q_proj/v_proj). Each request has a prompt of
20-60 tokens and asks for a number of new tokens drawn uniformly from [--min-new, --max-new]; it
gets exactly that many (greedy, EOS ignored: the bench counts tokens, not text). Three systems
replay the same trace in real time:

  loraops          the serving engine (continuous batching, slot pool of --slots adapters, n-gram
                   speculative decoding: the defaults of `loraops serve`)
  loraops-nospec   the same without speculative decoding (--speculate 0)
  loraops-base     the same engine, every request on the bare base (the cost of LoRA)
  loraops-int8     (--int8) the engine on an int8 base, LoRA in fp32 (`serve --quantize int8`)
  peft             PEFT with every adapter loaded; static batches of up to --batch arrived
                   requests, one `generate(adapter_names=...)` per batch (left padding); a batch
                   runs until its longest request is done, and its requests answer when it ends

Prints tokens/s, p50/p99 time-to-first-token and end-to-end latency, and ratios to PEFT. With
--repeat R every system runs R times, round-robin, and each shows its median run.

    .venv/bin/python bench/serve.py [--base gemma-3-270m] [--adapters 8,32,128] [--requests 32] [--threads 1]
                                    [--repeat 3] [--no-peft] [--int8]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

PROMPTS = ["Classify this support ticket and route it: ", "Extract vendor, total and currency from: ",
           "Summarise the following customer message in one line: ", "Translate to formal English: "]
FILLER = ("invoice INV-2024-0042 from Acme GmbH totals 1,234.50 EUR, due 2024-03-01; the customer says the "
          "amount is wrong and asks for a corrected copy before the end of the month ")


def trace(n_requests: int, n_adapters: int, rate: float, tokenizer, seed: int, min_new: int, max_new: int):
    """-> [(arrival_s, adapter_index, prompt_ids, new_tokens)]: Poisson arrivals, Zipf adapter choice.
    The adapter draws use their own generator, so every N gets the same arrivals, prompts and
    lengths: tokens/s at 128 adapters vs 8 compares the same work."""
    g, g_adapter = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    weights = torch.tensor([1.0 / (k + 1) ** 1.1 for k in range(n_adapters)])
    t, out = 0.0, []
    for i in range(n_requests):
        t += float(torch.empty(1).exponential_(rate, generator=g))
        adapter = int(torch.multinomial(weights, 1, generator=g_adapter))
        words = int(torch.randint(10, 40, (1,), generator=g))
        text = PROMPTS[i % len(PROMPTS)] + " ".join(FILLER.split()[:words])
        new = int(torch.randint(min_new, max_new + 1, (1,), generator=g))
        out.append((t, adapter, tokenizer(text)["input_ids"], new))
    return out


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


def summarise(name: str, arrivals, first, done, tokens: int, wall: float) -> dict:
    ttft = sorted(f - a for a, f in zip(arrivals, first))
    lat = sorted(d - a for a, d in zip(arrivals, done))
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {"name": name, "tok_s": tokens / wall, "ttft50": statistics.median(ttft), "ttft99": q(ttft, 0.99),
            "lat50": statistics.median(lat), "lat99": q(lat, 0.99)}


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
                                         max_queue=10_000, max_tokens_cap=max(r[3] for r in tr), **spec))
    engine.eos_ids.clear()                                     # exactly the asked-for tokens per request
    names = [] if base_only else [engine.add_adapter(f"ad{i}", p).model_id for i, p in enumerate(paths)]
    engine.start()
    n = len(tr)
    first, done = [0.0] * n, [0.0] * n
    finished = threading.Semaphore(0)

    def sink_for(i):
        def sink(ev):
            if isinstance(ev, TokenEvent) and not first[i]:
                first[i] = time.perf_counter()
            elif isinstance(ev, DoneEvent):
                done[i] = time.perf_counter()
                finished.release()
        return sink
    t0 = time.perf_counter()
    for i, (at, ad, ids, new) in enumerate(tr):
        time.sleep(max(0.0, t0 + at - time.perf_counter()))
        engine.submit("bench", base.info.name if base_only else names[ad], ids,
                      SamplingParams(new, temperature=0.0), sink_for(i))
    for _ in range(n):
        finished.acquire()
    wall = time.perf_counter() - t0
    stats = engine.pool.stats
    engine.stop()
    loads = [] if base_only else cold_loads(engine, paths)
    arrivals = [t0 + at for at, *_ in tr]
    name = ("loraops-base" if base_only else "loraops-int8" if int8 else
            "loraops-nospec" if speculate == 0 else "loraops")
    out = summarise(name, arrivals, first, done, sum(r[3] for r in tr), wall)
    drafted, accepted = engine.spec_stats
    out["slots"] = f"drafts {accepted}/{drafted} accepted; " if drafted else ""
    out["slots"] += f"hits {stats.hits} misses {stats.misses} evictions {stats.evictions}"
    if loads:
        out["slots"] += f"; cold load p50 {statistics.median(loads) * 1e3:.1f} ms, max {max(loads) * 1e3:.1f} ms"
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

    model = PeftModel.from_pretrained(copy.deepcopy(base.model), paths[0], adapter_name="ad0")
    for i, p in enumerate(paths[1:], 1):
        model.load_adapter(p, adapter_name=f"ad{i}")
    model.eval()
    tok = base.tokenizer
    tok.padding_side = "left"

    class FirstToken(LogitsProcessor):
        def __init__(self):
            self.at = None

        def __call__(self, input_ids, scores):
            self.at = self.at or time.perf_counter()
            return scores
    n = len(tr)
    first, done = [0.0] * n, [0.0] * n
    t0 = time.perf_counter()
    arrivals = [t0 + at for at, *_ in tr]
    i = 0
    while i < n:
        time.sleep(max(0.0, arrivals[i] - time.perf_counter()))
        now = time.perf_counter()
        j = i + 1
        while j < n and j - i < batch and arrivals[j] <= now:
            j += 1
        ids = [tr[k][2] for k in range(i, j)]
        max_new = max(tr[k][3] for k in range(i, j))      # a static batch runs until its longest request ends
        width = max(map(len, ids))
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        ft = FirstToken()
        with torch.no_grad():
            model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                           do_sample=False, adapter_names=[f"ad{tr[k][1]}" for k in range(i, j)],
                           logits_processor=LogitsProcessorList([ft]), pad_token_id=tok.pad_token_id)
        end = time.perf_counter()
        for k in range(i, j):
            first[k], done[k] = ft.at, end
        i = j
    wall = time.perf_counter() - t0
    return summarise("peft", arrivals, first, done, sum(r[3] for r in tr), wall)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--adapters", default="8,32,128")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--min-new", type=int, default=8)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--int8", action="store_true", help="also run loraops on an int8 base (serve --quantize int8)")
    p.add_argument("--no-peft", action="store_true", help="skip PEFT (ratios between loraops rows only)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each system, interleaved; the median is shown")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every system (1: best on a busy CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from loraops.models import load_base

    base = load_base(args.base)
    print(f"# {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, base {args.base}, "
          f"{args.requests} requests at {args.rate}/s, {args.min_new}-{args.max_new} new tokens, rank {args.rank} q/v, "
          f"batch {args.batch}, slots {args.slots}")
    print(f"{'adapters':>8} {'system':>13} {'tok/s':>7} {'TTFT p50':>9} {'p99':>7} {'lat p50':>8} {'p99':>7}"
          f" {'tok/s vs peft':>13}")
    for n in [int(x) for x in args.adapters.split(",")]:
        with tempfile.TemporaryDirectory() as d:
            paths = make_adapters(base.model, n, args.rank, Path(d))
            tr = trace(args.requests, n, args.rate, base.tokenizer, args.seed, args.min_new, args.max_new)
            slots = min(args.slots, n)
            systems = [lambda: run_loraops(base, paths, tr, slots, args.batch, False),
                       lambda: run_loraops(base, paths, tr, slots, args.batch, False, speculate=0),
                       lambda: run_loraops(base, paths, tr, slots, args.batch, True)]
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
            rows = [median_run(r) for r in runs]
        peft = rows[-1]["tok_s"] if not args.no_peft else float("nan")
        for r in rows:
            print(f"{n:>8} {r['name']:>13} {r['tok_s']:>7.1f} {r['ttft50']:>8.2f}s {r['ttft99']:>6.2f}s "
                  f"{r['lat50']:>7.2f}s {r['lat99']:>6.2f}s {r['tok_s'] / peft:>12.2f}x  {r.get('slots', '')}")


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s, noting the others' range when there are several."""
    ranked = sorted(runs, key=lambda r: r["tok_s"])
    out = dict(ranked[len(ranked) // 2])
    if len(runs) > 1:
        out["slots"] = (f"median of {len(runs)} (tok/s {ranked[0]['tok_s']:.1f}-{ranked[-1]['tok_s']:.1f}); "
                        + out.get("slots", ""))
    return out

if __name__ == "__main__":
    main()
