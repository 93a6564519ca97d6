"""The linear-layer kernels the engine chooses between, timed on Gemma 3 270M's shapes.

For each shape (q_proj 640->1024, gate_proj 640->2048, down_proj 2048->640, the LM head
640->262144) and token count T, the best of several calls of:

  F.linear       fp32 x @ Wᵀ (what transformers does)
  rows_first     fp32 W @ xᵀ (serve/gemm.py; the head in row blocks), padded above 4 tokens to a
                 multiple of 16 — the "MKL staircase" is the F.linear-without-padding column
  int8 w8a16     Int8Linear weight-only: `_weight_int8pack_mm`, bf16 activations (<= 32 tokens)
  int8 w8a8      Int8Linear W8A8: fbgemm dynamic int8 with per-token row scaling
  int8 dequant   Int8Linear weight-only above 32 tokens: dequantize + fp32 sgemm

Weights are random with the real shapes (speed does not depend on the values). Prints µs (ms for
the head).

    .venv/bin/python bench/matmul.py [--threads 2] [--tokens 1,4,8,10,12,16,20,24,32,64] [--no-head]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from kernels import best_ms  # noqa: E402

SHAPES = {"q_proj": (640, 1024), "gate_proj": (640, 2048), "down_proj": (2048, 640), "lm_head": (640, 262144)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", default="1,4,8,10,12,16,20,24,32,64")
    p.add_argument("--no-head", action="store_true", help="skip the 262k-row head (slow to build)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from loraops.models.quantize import Int8Linear, _w8a16
    from loraops.serve.gemm import HEAD_BLOCK, WIDE, rows_first_linear

    print(f"# bench/matmul.py {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; best of several calls")
    print(f"{'shape':>10} {'T':>4} {'F.linear':>10} {'rows_first':>11} {'w8a16':>9} {'w8a8':>9} {'dequant':>9}  unit")
    g = torch.Generator().manual_seed(0)
    for name, (d_in, d_out) in SHAPES.items():
        if name == "lm_head" and args.no_head:
            continue
        linear = torch.nn.Linear(d_in, d_out, bias=False)
        linear.weight.data = torch.randn(d_out, d_in, generator=g) * 0.02
        w8a16, w8a8 = Int8Linear(linear, weight_only=True), Int8Linear(linear)
        block = HEAD_BLOCK if d_out > WIDE else None
        scale, unit = (1, "ms") if name == "lm_head" else (1e3, "µs")
        repeat = 3 if name == "lm_head" else 15
        with torch.no_grad():
            for t in map(int, args.tokens.split(",")):
                x = torch.randn(t, d_in, generator=g)
                row = [best_ms(lambda: F.linear(x, linear.weight), repeat),
                       best_ms(lambda: rows_first_linear(x, linear.weight, None, block), repeat),
                       best_ms(lambda: _w8a16(w8a16, x), repeat) if t <= 64 else float("nan"),
                       best_ms(lambda: w8a8(x), repeat),
                       best_ms(lambda: F.linear(x, w8a16.dequantize_weight()), repeat)]
                print(f"{name:>10} {t:>4} " + " ".join(f"{v * scale:>10.1f}" for v in row) + f"  {unit}", flush=True)


if __name__ == "__main__":
    main()
