"""Replay a bench/workload.py trace against any running OpenAI-compatible server over HTTP.

The same requests bench/serve.py gives loraops' engine in-process (chat messages, max_tokens,
temperature, top_p, seed; Poisson arrivals), streamed to `--url`, so loraops serve, llama.cpp's
server and vLLM are measured on one workload by one client. Request i asks for
`--model` number (adapter index mod the number of --model values). Prints the same columns as
bench/serve.py. The tokenizer (--tokenizer, default the default base) only sizes the tenant
requests' max_tokens, so every server gets identical request bodies.

    .venv/bin/python bench/replay.py --url http://127.0.0.1:8000/v1 --model acme-invoices
        [--model globex-support ...] [--api-key KEY] [--trace realistic] [--requests 32] [--rate 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import workload  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", action="append", required=True, help="model id(s) the requests are spread over")
    p.add_argument("--api-key", default="none")
    p.add_argument("--trace", default="realistic", choices=["realistic", "repetitive"])
    p.add_argument("--tokenizer", default="gemma-3-270m", help="a base (name or dir) whose tokenizer sizes max_tokens")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="server", help="the system's name in the output")
    args = p.parse_args()
    from transformers import AutoTokenizer

    from loraops.models import resolve_base

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base(args.tokenizer).path))
    trace = workload.make(args.trace, args.requests, len(args.model), args.rate, tokenizer, args.seed)
    print(f"# bench/replay.py {time.strftime('%Y-%m-%d %H:%M')} {args.url}, trace {args.trace}: "
          f"{workload.describe(trace)}; models {', '.join(args.model)}")
    outcomes, wall = workload.replay_http(args.url.rstrip("/"), trace, args.model, args.api_key)
    r = workload.summarise(args.name, outcomes, wall)
    print(f"{'system':>14} {'tok/s':>7} {'req/s':>6} {'TTFT p50':>9} {'p99':>7} {'lat p50':>8} {'p99':>7} errors")
    print(f"{r['name']:>14} {r['tok_s']:>7.1f} {r['req_s']:>6.2f} {r['ttft50']:>8.2f}s {r['ttft99']:>6.2f}s "
          f"{r['lat50']:>7.2f}s {r['lat99']:>6.2f}s {r['errors']}")
    for o in outcomes:
        if o.error:
            print("error:", o.error)


if __name__ == "__main__":
    main()
