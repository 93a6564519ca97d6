"""Structured extraction with and without constrained decoding, base and adapter, in one run.

Evaluates the adapter and its base (`loraops.evals`, greedy) on the demo invoices val set twice:
free decoding, then decoding under the task's JSON schema (`demo.tasks.invoice_json_schema`,
enforced per row by the grammar module the server uses for response_format json_schema). Prints,
for base/adapter × free/constrained: JSON field accuracy, parse rate (the answer holds a JSON
object) and the hallucinated-field rate (predicted values that occur nowhere in the prompt).

    .venv/bin/python bench/extraction.py --adapter DIR [--base gemma-3-270m]
                                         [--data demo-run/data/invoices] [--max-examples 16]
"""

from __future__ import annotations

import argparse
import platform
import time


def _rows(report, constrained: bool, seconds: float) -> list[tuple]:
    """-> (model, decoding, field accuracy, parse rate, hallucinated-field rate, seconds for both sides)."""
    decoding = "constrained" if constrained else "free"
    rows = []
    for name, scores in (("base", report.domain_base), ("adapter", report.domain_adapted)):
        parse_rate = 1 - scores.parse_failures / scores.json_examples
        rows.append((name, decoding, scores.field_accuracy, parse_rate, scores.hallucination_rate, seconds))
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--adapter", required=True)
    p.add_argument("--data", default="demo-run/data/invoices")
    p.add_argument("--max-examples", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: longest reference + 8")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from loraops.demo.tasks import invoice_json_schema
    from loraops.evals import EvalConfig, evaluate

    torch.set_num_threads(args.threads)
    print(f"# bench/extraction.py  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, base {args.base}, up to {args.max_examples} "
          f"examples of {args.data}", flush=True)
    print(f"{'model':10}{'decoding':14}{'field_acc':>11}{'parse_rate':>12}{'hallucinated':>14}{'eval_s':>9}",
          flush=True)
    for schema in (None, invoice_json_schema()):
        # The general suite is not what this bench measures: keep it minimal.
        config = EvalConfig(data=args.data, max_examples=args.max_examples, batch_size=args.batch_size,
                            max_new_tokens=args.max_new_tokens, general_passages=1, general_tokens=16,
                            questions_per_kind=1, json_schema=schema)
        t = time.perf_counter()
        report = evaluate(args.base, args.adapter, config)
        # Printed as each run ends: a slow machine still leaves the free half of the table.
        for name, decoding, acc, parsed, halluc, seconds in _rows(report, schema is not None,
                                                                   time.perf_counter() - t):
            print(f"{name:10}{decoding:14}{acc:11.3f}{parsed:12.3f}{halluc:14.3f}{seconds:9.1f}", flush=True)
    print(f"# {report.comparable['examples']} examples, {report.comparable['max_new_tokens']} new tokens max")

if __name__ == "__main__":
    main()
