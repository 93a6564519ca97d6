"""LoRA training speed and memory: loraops vs PEFT + transformers Trainer, same run, same data.

Both sides train the same LoRA (rank, alpha, targets, lr schedule, seed, precision) on the default
base for one epoch of the same generated instruction data (prompt + completion of 50-400 tokens,
completion-only loss). loraops packs examples into rows with a block-diagonal mask and computes
the LM head only at loss positions, in chunks; the baseline is what a user would otherwise run:
PEFT's get_peft_model + Trainer with a padding collator (labels -100 on prompt and padding).
Each side runs in its own subprocess (peak RSS is its own). Printed: tokens/s (non-pad tokens),
peak RSS during training, val loss of both adapters measured by the same plain-torch function,
ratios, and model FLOPs utilisation against a matmul peak measured in this run.

    .venv/bin/python bench/train.py [--examples 12] [--val 4] [--peft-batch 4] [--rank 16] [--precision fp32]

The defaults fit ~10 minutes on a busy 2-core CPU; scale up with --examples 96 --peft-batch 8.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENDORS = ["Acme GmbH", "Globex Ltd", "Initech SA", "Umbrella BV", "Stark Industries", "Wayne Enterprises",
           "Hooli Inc", "Soylent Corp", "Tyrell AG", "Cyberdyne KK"]
FILLER = ("please find attached the document for the services rendered during the period as agreed in "
          "our contract the payment terms remain unchanged and late fees apply after thirty days we "
          "thank you for your business and look forward to working with you again regarding the "
          "delivery of goods shipped via express courier to the warehouse address on file").split()
CURRENCIES = ["EUR", "USD", "GBP", "CHF"]


def make_records(n: int, seed: int) -> list[dict]:
    """Invoice-extraction instructions: a noisy invoice text of variable length -> a JSON answer.
    The answer is a function of the prompt, so the val loss measures learning."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        fields = {"vendor": r.choice(VENDORS), "invoice_number": f"INV-{r.randint(2020, 2026)}-{r.randint(1, 999):03d}",
                  "date": f"2025-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                  "total": round(r.uniform(10, 9999), 2), "currency": r.choice(CURRENCIES)}
        items = [f"{r.choice(FILLER)} x{r.randint(1, 9)} at {r.uniform(1, 500):.2f}" for _ in range(r.randint(0, 8))]
        noise = [" ".join(r.choice(FILLER) for _ in range(r.randint(3, 20))) for _ in range(r.randint(0, 5))]
        if r.random() < 0.2:  # short questions: the low end of the length range
            prompt = (f"Invoice {fields['invoice_number']} from {fields['vendor']}, amount due {fields['total']} "
                      f"{fields['currency']}. Who is the vendor and what is the currency?")
            out.append({"prompt": prompt, "completion": f" {fields['vendor']}, {fields['currency']}"})
            continue
        body = [f"From: {fields['vendor']}", f"Invoice {fields['invoice_number']} dated {fields['date']}",
                *noise[: len(noise) // 2], *items, f"Amount due: {fields['total']} {fields['currency']}",
                *noise[len(noise) // 2:]]
        prompt = ("Extract vendor, invoice_number, date, total and currency from this invoice as JSON.\n\n"
                  + "\n".join(body) + "\n\nJSON:")
        completion = " " + json.dumps(fields)
        if items and r.random() < 0.5:  # some answers also list the line items: longer completions
            completion += "\nLine items: " + "; ".join(items)
        out.append({"prompt": prompt, "completion": completion})
    return out


def write_data(root: Path, n_train: int, n_val: int, seed: int) -> Path:
    records = make_records(n_train + n_val, seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", records[:n_train]), ("val.jsonl", records[n_train:])):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    return root


# ---- shared by both children ------------------------------------------------------------------


def examples(tokenizer, path: Path, max_len: int) -> list[tuple[list[int], list[int]]]:
    from loraops.data.tokenize import encode_example

    return [encode_example(tokenizer, json.loads(line), max_len) for line in path.read_text().splitlines()]


def val_loss(model, exs) -> float:
    """Mean next-token loss over completion tokens, one example at a time, full logits: the same
    plain computation for both adapters."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in exs:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            total += float(F.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return total / count


def body_params(model) -> tuple[int, int, int]:
    """(non-embedding parameters of the frozen base, vocab size, hidden size)."""
    head = model.get_output_embeddings().weight
    emb = model.get_input_embeddings().weight
    n = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    n -= emb.numel() + (0 if head.data_ptr() == emb.data_ptr() else head.numel())
    return n, head.shape[0], head.shape[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- children ---------------------------------------------------------------------------------


def run_loraops(a) -> dict:
    import torch

    from loraops.models import load_adapter_onto, load_base
    from loraops.train import TrainConfig, run

    cfg = TrainConfig(base=a.base, data=str(a.data), out=str(a.work / "loraops"), rank=a.rank, alpha=2 * a.rank,
                      targets=a.targets, max_steps=a.steps, batch_size=a.rows, seq_len=a.seq_len, lr=a.lr,
                      warmup_steps=a.warmup, seed=a.seed, precision=a.precision, save_every=10**6,
                      eval_every=10**6, progress=False)
    result = run(cfg)
    peak = peak_rss_mb()
    metrics = [json.loads(line) for line in (a.work / "loraops" / "metrics.jsonl").read_text().splitlines()]
    loss_tokens = sum(r["loss_tokens"] for r in metrics if "loss_tokens" in r)
    base = load_base(a.base)
    load_adapter_onto(base.model, base.info, result.adapter_dir)
    n_body, vocab, hidden = body_params(base.model)
    return {"tokens": result.tokens, "loss_tokens": loss_tokens, "seconds": result.seconds, "peak_rss_mb": peak,
            "val_loss": val_loss(base.model, examples(base.tokenizer, a.data / "val.jsonl", a.seq_len)),
            "steps": result.steps, "n_body": n_body, "vocab": vocab, "hidden": hidden,
            "train_loss": result.train_loss, "threads": torch.get_num_threads()}


def run_peft(a) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from loraops.models import resolve_base

    path = resolve_base(a.base).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    targets = a.targets if a.targets == "all-linear" else a.targets.split(",")
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    train = [{"input_ids": ids, "labels": labels} for ids, labels in examples(tokenizer, a.data / "train.jsonl",
                                                                                a.seq_len)]
    args = TrainingArguments(output_dir=str(a.work / "peft"), per_device_train_batch_size=a.peft_batch,
                             max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="cosine",
                             warmup_steps=a.warmup, weight_decay=0.0, max_grad_norm=1.0, seed=a.seed,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             bf16=a.precision == "bf16", dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    peak = peak_rss_mb()
    seen = a.steps * a.peft_batch  # one epoch: every example once (steps chosen so)
    tokens = sum(len(e["input_ids"]) for e in train[:seen])
    loss_tokens = sum(sum(x != -100 for x in e["labels"][1:]) for e in train[:seen])
    n_body, vocab, hidden = body_params(model)
    val = val_loss(model, examples(tokenizer, a.data / "val.jsonl", a.seq_len))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": tokens, "loss_tokens": loss_tokens, "seconds": seconds, "peak_rss_mb": peak, "val_loss": val,
            "steps": a.steps, "n_body": n_body, "vocab": vocab, "hidden": hidden,
            "train_loss": losses[-1] if losses else None, "threads": torch.get_num_threads()}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    x, y = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(x, y)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(x, y)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def model_flops(r: dict) -> float:
    """Frozen base + LoRA: forward 2·N and backward (input gradients only) 2·N per token through the
    body, and 4·V·H per position that needs the LM head for the loss. Attention's T² term and the
    LoRA matmuls are left out (small here)."""
    return 4 * r["n_body"] * r["tokens"] + 4 * r["vocab"] * r["hidden"] * r["loss_tokens"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--examples", type=int, default=12, help="training examples (one epoch on both sides)")
    p.add_argument("--val", type=int, default=4)
    p.add_argument("--peft-batch", type=int, default=4, help="examples per step for the baseline")
    p.add_argument("--seq-len", type=int, default=1024, help="loraops packed row length (and max example length)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="all-linear")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=0, help="0: both schedules are the same cosine (HF's warmup starts at lr 0)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--side", choices=["loraops", "peft"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        print(json.dumps(run_loraops(a) if a.side == "loraops" else run_peft(a)))
        return

    import torch

    from loraops.models import load_base
    from loraops.train.batches import epoch_rows

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = write_data(work / "data", a.examples, a.val, a.seed)
    tokenizer = load_base(a.base).tokenizer  # also converts the default base into the cache once
    train_exs = examples(tokenizer, data / "train.jsonl", a.seq_len)
    lengths = [len(ids) for ids, _ in train_exs]
    # Same data and the same number of optimizer steps on both sides: one epoch, with loraops'
    # rows per step chosen so its packed epoch takes as many steps as the baseline's batches.
    steps = math.ceil(len(train_exs) / a.peft_batch)
    n_rows = len(epoch_rows(train_exs, a.seq_len, a.seed, 0))
    rows = math.ceil(n_rows / steps)
    print(f"data: {len(train_exs)} train examples, {a.val} val; lengths {min(lengths)}-{max(lengths)} tokens "
          f"(mean {sum(lengths) / len(lengths):.0f}); {steps} steps: baseline {a.peft_batch} examples/step, "
          f"loraops {rows} packed rows of <= {a.seq_len} tokens/step ({n_rows} rows)", flush=True)
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048³, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s", flush=True)

    results = {}
    for side in ("loraops", "peft"):
        cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--data", str(data),
               "--steps", str(steps), "--rows", str(rows), "--base", a.base, "--peft-batch", str(a.peft_batch),
               "--seq-len", str(a.seq_len), "--rank", str(a.rank), "--targets", a.targets, "--lr", str(a.lr),
               "--warmup", str(a.warmup), "--precision", a.precision, "--seed", str(a.seed)]
        load = os.getloadavg()[0]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{side}: done in {time.perf_counter() - t:.0f}s (1-min load average at start {load:.1f})", flush=True)

    ours, base = results["loraops"], results["peft"]
    rows_out = []
    for name, key, fmt in (("tokens/s (non-pad)", "tps", "{:.1f}"), ("peak RSS during training (MB)", "peak_rss_mb", "{:.0f}"),
                           ("val loss (completion tokens)", "val_loss", "{:.4f}"), ("final train loss", "train_loss", "{:.4f}"),
                           ("train seconds", "seconds", "{:.1f}"), ("MFU vs matmul peak", "mfu", "{:.1%}")):
        for r in (ours, base):
            r["tps"] = r["tokens"] / r["seconds"]
            r["mfu"] = model_flops(r) / r["seconds"] / (peak * 1e9)
        ratio = ours[key] / base[key] if base[key] else float("nan")
        rows_out.append((name, fmt.format(ours[key]), fmt.format(base[key]), f"{ratio:.2f}x"))
    print(f"\n{'':32} {'loraops':>12} {'PEFT+Trainer':>14} {'ratio':>8}")
    for name, x, y, ratio in rows_out:
        print(f"{name:32} {x:>12} {y:>14} {ratio:>8}")
    print(f"\ntokens trained: loraops {ours['tokens']}, baseline {base['tokens']} (same examples); "
          f"steps {ours['steps']} / {base['steps']}; threads {ours['threads']}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print(json.dumps({"matmul_gflops": peak, "loraops": ours, "peft": base}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
