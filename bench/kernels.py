"""The serving engine's two decode-step kernels against their slow twins, same process, same data.

- LoRA over many adapters (serve/lora_kernels.py): `lora_padded` (slot groups padded into two
  batched matmuls) vs `lora_sgmv` (one matmul pair per slot), for a q_proj-shaped module
  (640 -> 1024), a pool of rank-16 slots holding rank-8 adapters, T tokens over a Zipf mix of
  --adapters adapters, the shape of a decode step. Checked equal to `lora_reference` first.
- The greedy LM head (serve/head.py): `ScreenedArgmax` (int8 logits + fp32 check of the
  candidates) vs the engine's fp32 head (`rows_first_linear` in row blocks) + argmax, on the
  default base's real head and real hidden states (the text below), at 16 and 32 rows. Checked
  to give the same tokens first; prints the candidates per row.

    .venv/bin/python bench/kernels.py [--base gemma-3-270m] [--threads 2] [--adapters 32]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

TEXT = ("Extract vendor, total and currency from: invoice INV-2024-0042 from Acme GmbH totals 1,234.50 EUR, "
        "due 2024-03-01; the customer says the amount is wrong and asks for a corrected copy before the end of "
        "the month. In 1905, Albert Einstein published four papers that changed physics.")


def best_ms(f, repeat: int = 7) -> float:
    """The fastest of `repeat` timed calls, after one warm-up (ms): the least disturbed by the VM."""
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def bench_lora(tokens: int, adapters: int) -> None:
    from loraops.serve.lora_kernels import LoRATerm, lora_padded, lora_reference, lora_sgmv

    g = torch.Generator().manual_seed(0)
    n, r_max, r, d_in, d_out = adapters + 1, 16, 8, 640, 1024
    A, B = torch.zeros(n, r_max, d_in), torch.zeros(n, d_out, r_max)
    A[1:, :r] = torch.randn(adapters, r, d_in, generator=g) * 0.02
    B[1:, :, :r] = torch.randn(adapters, d_out, r, generator=g) * 0.02
    scale = torch.full((n,), 2.0)
    zipf = torch.tensor([1.0 / (k + 1) ** 1.1 for k in range(adapters)])
    idx = torch.multinomial(zipf, tokens, replacement=True, generator=g) + 1
    x = torch.randn(tokens, d_in, generator=g)
    term = LoRATerm.of(idx)
    ranks = [0] + [r] * adapters
    ref = lora_reference(x, A, B, scale, idx)
    padded = lambda: lora_padded(x, A, B, scale, term.padded, r)                     # noqa: E731
    sgmv = lambda: lora_sgmv(x, A, B, scale, term.order, term.segs, ranks)           # noqa: E731
    torch.testing.assert_close(padded(), ref)
    torch.testing.assert_close(sgmv(), ref)
    k = len([s for s, _, _ in term.segs if s])
    tp, ts = best_ms(padded, 50), best_ms(sgmv, 50)
    print(f"lora  {tokens:>3} tokens, {k:>2} adapters: padded {tp * 1e3:6.0f} µs  sgmv {ts * 1e3:6.0f} µs  "
          f"({ts / tp:.2f}x)")


def bench_head(base_name: str) -> None:
    from loraops.models import load_base
    from loraops.serve.gemm import HEAD_BLOCK, rows_first_linear
    from loraops.serve.head import ScreenedArgmax, head_outliers

    base = load_base(base_name)
    model, tok = base.model.eval(), base.tokenizer
    head = model.get_output_embeddings()
    outliers = head_outliers(model, tok)
    t0 = time.perf_counter()
    screen = ScreenedArgmax(head.weight, outliers)
    print(f"head  screen built in {time.perf_counter() - t0:.1f} s; lossless on this fbgemm: {screen.lossless()}")
    hidden = []
    hook = head.register_forward_pre_hook(lambda m, inp: hidden.append(inp[0][0].detach()))
    with torch.no_grad():
        model(**tok(TEXT, return_tensors="pt"))
    hook.remove()
    xs = hidden[0][1:]                                                  # every position but BOS
    with torch.no_grad():
        for rows in (16, 32):
            x = xs[:rows].contiguous()
            fp32 = lambda: rows_first_linear(x, head.weight, None, HEAD_BLOCK).argmax(-1)   # noqa: E731
            assert torch.equal(screen(x), fp32())
            approx, coef = screen._approx(x)
            bound = screen.bound(coef, torch.arange(approx.shape[1]))
            lower = (x * head.weight[fp32()]).sum(-1)
            cands = (approx + bound >= lower[:, None]).sum(-1).float()
            tf, tsc = best_ms(fp32, 3), best_ms(lambda: screen(x), 3)
            print(f"head  {rows} rows: fp32 {tf:6.1f} ms  screened {tsc:6.1f} ms  ({tf / tsc:.2f}x); same tokens; "
                  f"candidates per row median {cands.median():.0f}, max {cands.max():.0f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adapters", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}")
    for tokens in (16, 32):
        bench_lora(tokens, args.adapters)
    bench_head(args.base)


if __name__ == "__main__":
    main()
