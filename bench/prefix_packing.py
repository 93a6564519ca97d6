"""Shared-prefix packing: training examples per CPU-second with the task's fixed prompt prefix packed
once per row vs whole examples, same run, same rows of the demo's curated data.

Every example of a demo task starts with the same instruction and chat-template tokens (38 for the
tickets). `pack(shared_prefix=...)` puts them once in a row and lets each example attend to them;
the loss and gradients are those of whole examples (tests/unit/train/test_train_batches.py). This
measures what that saves: forward + backward of the LoRA'd base over the same examples, packed both
ways, timed in process CPU time (so other work on a shared box counts less), and the two losses.

    .venv/bin/python bench/prefix_packing.py [--data demo-run/data] [--examples 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo-run/data", help="a `loraops demo` workdir's data/ (one dir per task)")
    ap.add_argument("--tasks", default="tickets,invoices")
    ap.add_argument("--examples", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from loraops.data.tokenize import pack, shared_prompt_prefix
    from loraops.lora import LoRAConfig, inject
    from loraops.models import load_base
    from loraops.train import TrainConfig
    from loraops.train.batches import collate, encode_all, load_dataset
    from loraops.train.loop import lm_loss

    base = load_base("gemma-3-270m")
    inject(base.model, LoRAConfig(r=16, alpha=32, target_modules="all-linear"))
    cfg = TrainConfig(base="gemma-3-270m", data="-", out="-")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    for task in args.tasks.split(","):
        data = load_dataset(f"{args.data}/{task}")
        examples = encode_all(base.tokenizer, data.train[:args.examples], args.seq_len)
        prefix = shared_prompt_prefix(examples)
        results = {}
        for name, shared in (("whole", ()), ("shared", prefix)):
            rows = pack(examples, args.seq_len, shared)
            cpu0, total = time.process_time(), 0.0
            for i in range(0, len(rows), args.batch_size):
                loss = lm_loss(base.model, collate(rows[i:i + args.batch_size], 0), cfg)
                loss.backward()
                total += float(loss.detach())
            cpu = time.process_time() - cpu0
            results[name] = {"rows": len(rows), "tokens": sum(len(r.input_ids) for r in rows),
                             "cpu_s": round(cpu, 1), "examples_per_cpu_s": round(len(examples) / cpu, 3),
                             "loss_sum": total}
        w, s = results["whole"], results["shared"]
        print(json.dumps({"task": task, "examples": len(examples), "prefix_tokens": len(prefix), **results,
                          "speedup": round(s["examples_per_cpu_s"] / w["examples_per_cpu_s"], 2),
                          "loss_rel_diff": abs(s["loss_sum"] - w["loss_sum"]) / w["loss_sum"]}))


if __name__ == "__main__":
    main()
