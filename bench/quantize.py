"""fp32 vs int8 through the serving engine: speed, memory and greedy agreement on every val prompt.

Each variant runs in its own subprocess (so peak RSS is its own) and builds the engine exactly as
`loraops serve` does (`--quantize int8`: `quantize_for_inference_` before the adapter, which stays
fp32). On the same prompts, greedy, EOS honoured, max_tokens = the reference answer's tokens + 16:

  solo      the first --solo prompts one at a time (batch 1): tokens/s
  batch     every prompt submitted at once (up to --batch rows per step): tokens/s, and each
            prompt's output tokens

Then it prints the ratios and, over every prompt, how often int8's greedy output is identical to
fp32's and the mean share of each fp32 output that int8 reproduces before its first difference.
Prompts: every line of each --data DIR/val.jsonl (curated, e.g. demo-run/data/invoices), or by
default held-out examples of both demo tenants (bench/workload.py). With --adapter the adapter is
on in both variants, and --domain also scores its domain metric (`loraops.evals`) on fp32 vs int8.

    .venv/bin/python bench/quantize.py [--base gemma-3-270m] [--adapter DIR] [--data DIR ...]
                                       [--examples 48] [--solo 4] [--batch 16] [--threads 2] [--domain]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def prompts(args, tokenizer) -> list[tuple[list[int], int]]:
    """-> (prompt ids, max_tokens) for every prompt, encoded as the server would."""
    import workload

    from loraops.evals.generate import encode_prompt

    def budget(answer: str) -> int:
        return len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 16
    if args.data:
        rows = [json.loads(line) for d in args.data for line in (Path(d) / "val.jsonl").read_text().splitlines()
                if line.strip()]
        return [(encode_prompt(tokenizer, r["prompt"]), budget(r["completion"])) for r in rows if "prompt" in r]
    out = []
    for task in ("invoices", "tickets"):
        for record in workload.tenant_examples(task, args.examples):
            request = workload.Request(0.0, 0, task, budget(record["messages"][-1]["content"]),
                                       messages=tuple(record["messages"][:-1]))
            out.append((workload.encode(tokenizer, request), request.max_tokens))
    return out


def _decode(engine, model: str, work: list[tuple[list[int], int]]) -> tuple[list[list[int]], float]:
    """Submit all of `work` at once and step the engine until every request is done (greedy)."""
    from loraops.serve.engine import TokenEvent
    from loraops.serve.sampling import SamplingParams

    outputs: list[list[int]] = [[] for _ in work]
    t0 = time.perf_counter()
    for (ids, max_tokens), out in zip(work, outputs):
        engine.submit("bench", model, ids, SamplingParams(max_tokens, temperature=0.0),
                      lambda ev, out=out: out.append(ev.token_id) if isinstance(ev, TokenEvent) else None)
    while engine.step() or engine.running or len(engine.queue):
        pass
    return outputs, time.perf_counter() - t0


def _child(args) -> dict:
    import torch

    from loraops.models import load_base
    from loraops.serve.engine import Engine, EngineConfig

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = load_base(args.base)
    if args.variant == "int8":  # as `serve --quantize int8`: before the adapter, which stays fp32
        from loraops.models.quantize import quantize_for_inference_

        quantize_for_inference_(base.model, base.tokenizer)
    work = prompts(args, base.tokenizer)
    # `loraops serve`'s defaults (KV cache 16384 tokens: its size is part of the RSS), a queue that takes them all
    engine = Engine(base, EngineConfig(max_batch=args.batch, max_queue=100_000, max_tokens_cap=max(m for _, m in work)))
    model = engine.add_adapter("adapter", args.adapter).model_id if args.adapter else base.info.name
    _decode(engine, model, work[:1])                                       # warm-up
    solo_tokens, solo_s = 0, 0.0
    for item in work[:args.solo]:
        out, seconds = _decode(engine, model, [item])
        solo_tokens, solo_s = solo_tokens + len(out[0]), solo_s + seconds
    outputs, batch_s = _decode(engine, model, work)
    return {"variant": args.variant, "prompts": len(work), "solo_tok_s": solo_tokens / solo_s,
            "batch_tok_s": sum(map(len, outputs)) / batch_s, "outputs": outputs,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--base", args.base, "--examples",
           str(args.examples), "--solo", str(args.solo), "--batch", str(args.batch), "--threads", str(args.threads)]
    cmd += ["--adapter", args.adapter] if args.adapter else []
    for d in args.data or []:
        cmd += ["--data", d]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{variant} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[int, float]:
    """-> (outputs identical to the reference, mean share of each reference output reproduced
    before the first difference)."""
    same, shares = 0, []
    for a, b in zip(reference, other):
        same += a == b
        prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(prefix / len(a) if a else 1.0)
    return same, sum(shares) / len(shares)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--adapter", default=None)
    p.add_argument("--data", action="append", default=None, help="curated dir with val.jsonl (repeatable)")
    p.add_argument("--examples", type=int, default=48, help="held-out examples per demo tenant without --data")
    p.add_argument("--solo", type=int, default=4, help="prompts decoded one at a time (batch 1)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--domain", action="store_true", help="also score --adapter's domain metric on --data[0]")
    p.add_argument("--max-examples", type=int, default=None, help="--domain: val examples (default all)")
    p.add_argument("--child", action="store_true")
    p.add_argument("--variant", default="fp32")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    import torch

    fp32, int8 = _run("fp32", args), _run("int8", args)
    print(f"# bench/quantize.py {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, base {args.base}, adapter {args.adapter or '-'}, "
          f"{fp32['prompts']} prompts ({', '.join(args.data) if args.data else 'demo tenants, held out'}), "
          f"through the engine, greedy, EOS honoured")
    print(f"{'':28}{'fp32':>10}{'int8':>10}{'ratio':>8}")
    for key, label in (("solo_tok_s", "tokens/s, batch 1"), ("batch_tok_s", f"tokens/s, batch {args.batch}"),
                       ("peak_rss_mb", "peak RSS (MB)")):
        print(f"{label:28}{fp32[key]:10.1f}{int8[key]:10.1f}{int8[key] / fp32[key]:8.2f}")
    same, share = agreement(fp32["outputs"], int8["outputs"])
    print(f"greedy outputs identical to fp32: {same}/{fp32['prompts']}; mean share of an fp32 output "
          f"reproduced before the first difference: {share:.3f}")
    if args.domain and args.adapter and args.data:
        from loraops.evals import EvalConfig, evaluate

        torch.set_num_threads(args.threads)
        scores = {}
        for quantize in (None, "int8"):
            config = EvalConfig(data=args.data[0], max_examples=args.max_examples, batch_size=8, general_passages=1,
                                general_tokens=16, questions_per_kind=1, quantize=quantize)
            scores[quantize or "fp32"] = evaluate(args.base, args.adapter, config).domain_adapted
        a, b = scores["fp32"], scores["int8"]
        print(f"domain {a.primary} ({a.examples} examples of {args.data[0]}): fp32 {a.primary_value:.3f}, "
              f"int8 {b.primary_value:.3f}, drop {100 * (a.primary_value - b.primary_value):.1f} points")


if __name__ == "__main__":
    main()
