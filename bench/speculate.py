"""The greedy fast paths on the product's own task: invoice extraction through the serving engine.

The demo adapter answers every val prompt of the demo's invoices data (greedy, up to --max-new
tokens, stopping at EOS / <end_of_turn> like the server), all submitted at once to one engine,
three times in the same run: the `loraops serve` defaults (n-gram speculation, int8-screened
greedy head), without speculation (--speculate 0), and with the fp32 head for every token
(--no-screen-head). Prints tokens/s, steps, draft acceptance, and checks that every run produced
the same tokens for every request (neither fast path may change greedy output).

    .venv/bin/python bench/speculate.py [--adapter demo-run/runs/acme-invoices/adapter]
                                        [--data demo-run/data/invoices] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch


def run(base, adapter: str, prompts: list[list[int]], max_new: int, batch: int, speculate: int = 4,
        screen_head: bool = True) -> dict:
    from loraops.models import LoadedBase
    from loraops.serve.engine import Engine, EngineConfig, TokenEvent
    from loraops.serve.sampling import SamplingParams

    loaded = LoadedBase(copy.deepcopy(base.model), base.tokenizer, base.info)
    engine = Engine(loaded, EngineConfig(max_slots=1, max_rank=64, max_batch=batch, max_kv_tokens=32768,
                                         max_queue=10_000, max_tokens_cap=max_new, speculate=speculate,
                                         screen_head=screen_head))
    engine.add_adapter("invoices", adapter)
    outputs: list[list[int]] = [[] for _ in prompts]
    steps = 0
    t0 = time.perf_counter()
    for i, ids in enumerate(prompts):
        def sink(ev, out=outputs[i]):
            if isinstance(ev, TokenEvent):
                out.append(ev.token_id)
        engine.submit("bench", "invoices", ids, SamplingParams(max_new, temperature=0.0), sink)
    while True:
        if engine.step():
            steps += 1
        elif not engine.running and not len(engine.queue):
            break
    wall = time.perf_counter() - t0
    tokens = sum(map(len, outputs))
    drafted, accepted = engine.spec_stats
    return {"tok_s": tokens / wall, "tokens": tokens, "steps": steps, "wall": wall, "drafted": drafted,
            "accepted": accepted, "outputs": outputs}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--adapter", default="demo-run/runs/acme-invoices/adapter")
    p.add_argument("--data", default="demo-run/data/invoices")
    p.add_argument("--max-new", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from loraops.evals.generate import encode_prompt
    from loraops.models import load_base

    base = load_base(args.base)
    rows = [json.loads(line) for line in (Path(args.data) / "val.jsonl").read_text().splitlines() if line.strip()]
    prompts = [encode_prompt(base.tokenizer, r["prompt"]) for r in rows]
    print(f"# {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, base {args.base}, "
          f"{len(prompts)} prompts, batch {args.batch}, up to {args.max_new} new tokens, greedy")
    runs = {"defaults": run(base, args.adapter, prompts, args.max_new, args.batch),
            "speculate 0": run(base, args.adapter, prompts, args.max_new, args.batch, speculate=0),
            "fp32 head": run(base, args.adapter, prompts, args.max_new, args.batch, screen_head=False)}
    first = runs["defaults"]
    for name, r in runs.items():
        acc = f"{r['accepted']}/{r['drafted']} drafts accepted" if r["drafted"] else ""
        same = sum(a == b for a, b in zip(r["outputs"], first["outputs"]))
        print(f"{name:>12}: {r['tok_s']:6.1f} tok/s (defaults: {first['tok_s'] / r['tok_s']:.2f}x)  "
              f"{r['tokens']} tokens in {r['steps']} steps, {r['wall']:.1f} s  {acc}  "
              f"same tokens as the defaults: {same}/{len(prompts)}")

if __name__ == "__main__":
    main()
