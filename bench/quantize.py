"""fp32 vs int8 (loraops.models.quantize) decode speed, memory and agreement on the default base.

Each variant runs in its own subprocess (so peak RSS is its own), on the same prompts, greedy,
with a KV cache, at batch 1 and batch 16. Prints tokens/s, peak RSS, the ratios, and how often
the int8 model's greedy tokens agree with fp32's (teacher-forced next-token agreement on the
fp32 outputs, so one early difference does not hide the rest).

With `--adapter DIR --data CURATED_DIR` the same run also evaluates the adapter's domain metric
(`loraops.evals`, greedy on the first `--max-examples` of val.jsonl) with the base in fp32 and in
int8, and prints both scores and the drop in points (the issue's target: at most 1).

    .venv/bin/python bench/quantize.py [--base gemma-3-270m] [--new-tokens 32] [--adapter DIR]
                                       [--data CURATED_DIR] [--max-examples 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

PROMPTS = [
    "Write a short note to a customer about a delayed parcel.",
    "Explain what an invoice number is in one sentence.",
    "List three colours and one fruit.",
    "Summarise: the meeting moved from Monday to Wednesday at 10am.",
]


def _child(args) -> dict:
    import torch

    from loraops.models import load_adapter_onto, load_base
    from loraops.models.quantize import quantize_for_inference_

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = load_base(args.base)
    model, tok = base.model, base.tokenizer
    if args.variant == "int8":  # as `serve --quantize int8`: before the adapter, which stays fp32
        quantize_for_inference_(model, tok)
    if args.adapter:
        load_adapter_onto(model, base.info, args.adapter)
    tok.padding_side = "left"
    results = {"variant": args.variant}
    for batch in (1, 16):
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=2, do_sample=False)  # warm-up
            t = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False)
            dt = time.perf_counter() - t
        results[f"tokens_per_s_b{batch}"] = batch * args.new_tokens / dt
        if batch == 1:
            results["tokens_b1"] = out[0].tolist()
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.reference_tokens:
        ref = json.loads(args.reference_tokens)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ref])).logits[0, :-1]
        prompt_len = len(tok(PROMPTS[0])["input_ids"])
        pred = logits.argmax(-1)[prompt_len - 1:]
        target = torch.tensor(ref[prompt_len:])
        results["next_token_agreement"] = (pred == target).float().mean().item()
    return results


def _domain_scores(args) -> dict:
    """-> {"fp32": DomainScores, "int8": DomainScores} of the adapted model (general suite kept minimal:
    it is not what this bench measures)."""
    from loraops.evals import EvalConfig, evaluate

    scores = {}
    for quantize in (None, "int8"):
        config = EvalConfig(data=args.data, max_examples=args.max_examples, batch_size=8, general_passages=1,
                            general_tokens=16, questions_per_kind=1, quantize=quantize)
        scores[quantize or "fp32"] = evaluate(args.base, args.adapter, config).domain_adapted
    return scores


def _run(variant: str, args, reference_tokens=None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--base", args.base,
           "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    if args.adapter:
        cmd += ["--adapter", args.adapter]
    if reference_tokens:
        cmd += ["--reference-tokens", json.dumps(reference_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--adapter", default=None)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=None, help="curated dir (val.jsonl): also score the adapter fp32 vs int8")
    p.add_argument("--max-examples", type=int, default=16)
    p.add_argument("--child", action="store_true")
    p.add_argument("--variant", default="fp32")
    p.add_argument("--reference-tokens", default=None)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    import torch

    fp32 = _run("fp32", args)
    int8 = _run("int8", args, reference_tokens=fp32["tokens_b1"])
    print(f"# bench/quantize.py  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, base {args.base}, {args.new_tokens} new tokens")
    print(f"{'':24}{'fp32':>12}{'int8':>12}{'ratio':>10}")
    for key in ("tokens_per_s_b1", "tokens_per_s_b16", "peak_rss_mb"):
        print(f"{key:24}{fp32[key]:12.1f}{int8[key]:12.1f}{int8[key] / fp32[key]:10.2f}")
    print(f"{'next_token_agreement':24}{1.0:12.3f}{int8['next_token_agreement']:12.3f}")
    if args.adapter and args.data:
        torch.set_num_threads(args.threads)
        scores = _domain_scores(args)
        a, b = scores["fp32"], scores["int8"]
        drop = 100 * (a.primary_value - b.primary_value)  # points: the metric is a fraction in [0, 1]
        print(f"{'domain ' + a.primary:24}{a.primary_value:12.3f}{b.primary_value:12.3f}"
              f"{'drop ' + format(drop, '.1f') + ' pts':>16}   ({a.examples} examples of {args.data})")


if __name__ == "__main__":
    main()
