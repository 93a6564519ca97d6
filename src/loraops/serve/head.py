"""The LM head in the engine: full logits for the rows that sample, only the argmax for greedy rows —
exact, at int8 cost — and, for prompt positions whose log-probabilities a request asked for (echo),
those log-probs, computed a few rows at a time (`score_rows`).

Greedy decoding needs argmax_v x·w_v over the vocabulary, not the logits. Gemma 3's head is
262k × 640, ~60% of a decode step's FLOPs in fp32. `ScreenedArgmax` finds the same token while
reading that weight as int8 (fbgemm's W8A8 kernel): ~3x faster at 16 rows (bench/kernels.py).

1. approx = the int8 logits (Int8Linear: W8A8, its outlier input channels in fp32);
2. b[t, v] >= |approx − exact|, a proven bound (below);
3. L[t] = the fp32 logit of approx's argmax: a lower bound of the true maximum;
4. every token with approx + b >= L is a candidate — a handful (Gemma 3: a median of 5–8, at most
   16 on real hidden states) — and every other token provably scores below L. The candidates' fp32 logits
   decide; ties go to the lowest id, as torch.argmax does.

The bound. Over the non-outlier channels the int8 logits are m·(û·ŵ_v), where u = x/m (m: the
row's absmax), û is u rounded to a 7-bit grid and ŵ_v the int8 row times its scale. We round û
ourselves (`grid_round`), so u − û is known, and since u·w − û·ŵ = (u − û)·w + û·(w − ŵ),
Cauchy–Schwarz gives

    |approx − exact| <= m·(‖u − û‖·‖w_v‖ + ‖û‖·‖w_v − ŵ_v‖) + ε·‖x‖·‖w_v‖_full

(norms over the int8 channels; the row norms are computed once). The ε term (1e-4, above
d·2⁻²⁴ for d up to ~1600) covers fp32 rounding in both products. "Exact" means equal to the
argmax of fp32 logits up to fp32 rounding: two tokens within ~1e-6 of each other may come out in
either order, as they may between any two fp32 matmul kernels.

`argmax_reference` is the definition, (x @ Wᵀ).argmax(-1); tests compare the two.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loraops.models.quantize import Int8Linear, activation_grid, row_absmax

log = logging.getLogger("loraops.serve")

BLOCK = 64        # vocabulary ids per block when looking for candidates (block maxima first)
CHUNK = 16        # rows per int8 matmul: fbgemm's time per row grows above ~16 rows (docs/benchmarks.md)
FP32_SLACK = 1e-4
NORM_ROWS = 16384  # weight rows per pass when computing the norms (bounded temporary memory)
SCORE_CHUNK = 64   # prompt rows per head call when scoring: 64 x 262k fp32 logits = 67 MB at a time


def argmax_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: [T, d], weight: [V, d] -> [T] the argmax of the fp32 logits."""
    return (x @ weight.T).argmax(-1)


class ScreenedArgmax:
    """argmax_reference(x, weight) computed from int8 logits plus an fp32 check of a few candidates.
    weight: [V, d] fp32, shared (not copied); outliers: input channels kept in fp32 (`calibrate`)."""

    def __init__(self, weight: torch.Tensor, outliers: torch.Tensor | None = None):
        self.weight = weight.detach()
        vocab, dim = self.weight.shape
        linear = nn.Linear(dim, vocab, bias=False, device="meta")
        linear.weight = nn.Parameter(self.weight, requires_grad=False)
        self.int8 = Int8Linear(linear, weight_only=False, outliers=outliers)
        keep = self.int8.keep_mask if self.int8.keep_mask is not None else torch.ones(dim)
        qw, scale = self.int8.int8_weight()
        norms = [], [], []
        for lo in range(0, vocab, NORM_ROWS):
            w = self.weight[lo:lo + NORM_ROWS]
            kept = w * keep
            norms[0].append(kept.norm(dim=1))
            norms[1].append((kept - qw[lo:lo + NORM_ROWS].float() * scale[lo:lo + NORM_ROWS, None]).norm(dim=1))
            norms[2].append(w.norm(dim=1))
        pad = -vocab % BLOCK                                  # norms padded to whole blocks with zeros
        self.w_norm, self.err_norm, self.full_norm = (F.pad(torch.cat(n), (0, pad)) for n in norms)
        # [3, nb]: each block's largest norms, for a bound on a whole block in one small matmul
        self.block_norms = torch.stack([n.view(-1, BLOCK).amax(-1) for n in (self.w_norm, self.err_norm,
                                                                           self.full_norm)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, d] -> [T] token ids."""
        x = x.float()
        return torch.cat([self._tokens(x[lo:lo + CHUNK].contiguous()) for lo in range(0, x.shape[0], CHUNK)])

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        rows, vocab = x.shape[0], self.weight.shape[0]
        approx, coef = self._approx(x)                                          # [T, V], [T, 3]
        if vocab % BLOCK:
            approx = F.pad(approx, (0, -vocab % BLOCK), value=-math.inf)
        blocks = approx.view(rows, -1, BLOCK)                                   # [T, nb, BLOCK]
        block_max = blocks.amax(-1)                                             # [T, nb]
        # L: the exact logit of approx's argmax.
        top_block = block_max.argmax(-1)                                        # [T]
        t = torch.arange(rows)
        first = top_block * BLOCK + blocks[t, top_block].argmax(-1)             # [T]
        lower = (x * self.weight[first]).sum(-1)                                # [T]
        # Blocks that may hold a winner (a bound per block), then their tokens (a bound per token).
        block_bound = coef @ self.block_norms                                   # [T, nb]
        cand_t, cand_b = (block_max + block_bound >= lower[:, None]).nonzero(as_tuple=True)
        ids = cand_b[:, None] * BLOCK + torch.arange(BLOCK)                     # [n, BLOCK]
        hit = blocks[cand_t, cand_b] + self.bound(coef[cand_t], ids) >= lower[cand_t, None]   # [n, BLOCK]
        rows_of = cand_t[:, None].expand_as(ids)[hit]                           # [m]
        ids = ids[hit]                                                          # [m], sorted per row
        exact = (x[rows_of] * self.weight[ids]).sum(-1)                         # [m] fp32 logits
        best = torch.full((rows,), -math.inf).scatter_reduce(0, rows_of, exact, "amax")
        win = exact == best[rows_of]
        tokens = torch.full((rows,), vocab).scatter_reduce(0, rows_of[win], ids[win], "amin")
        lost = tokens == vocab            # no candidate: impossible by the bound, but never emit a bad id
        if lost.any():
            tokens[lost] = argmax_reference(x[lost], self.weight)
        return tokens

    def bound(self, coef: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The proven |int8 logit − fp32 logit| (module docstring) of tokens `ids` ([T, n]) for rows
        with bound coefficients `coef` ([T, 3], from `_approx`) -> [T, n]."""
        return (coef[:, 0:1] * self.w_norm[ids] + coef[:, 1:2] * self.err_norm[ids]
                + coef[:, 2:3] * self.full_norm[ids])

    def _approx(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [T, d] -> (int8 logits [T, V], bound coefficients [T, 3]: m·‖u − û‖, m·‖û‖ and
        FP32_SLACK·‖x‖, the factors of ‖w_v‖, ‖w_v − ŵ_v‖ and ‖w_v‖_full in the bound).
        We round u to the 7-bit grid ourselves and give fbgemm û plus one extra row holding the
        grid's two ends, so its own quantization (one grid per call, from the input's min and
        max) lands on the same grid and changes nothing: û is known exactly. `lossless` checks
        that on this build of fbgemm once, at start-up."""
        q = self.int8
        kept = x if q.keep_mask is None else x * q.keep_mask
        m = row_absmax(kept)                                                    # [T, 1]
        u = kept / m
        u_hat, ends = grid_round(u)
        coef = torch.stack([m[:, 0] * (u - u_hat).norm(dim=-1), m[:, 0] * u_hat.norm(dim=-1),
                            FP32_SLACK * x.norm(dim=-1)], 1)
        y = torch.ops.quantized.linear_dynamic(torch.cat([u_hat, ends]), q.packed, True)[:-1]   # [T, V]
        if q.outliers is not None:                                              # += x[:, k] @ W[:, k]ᵀ, fp32
            return y.mul_(m).addmm_(x.index_select(1, q.outliers), q.w_outliers_t), coef
        return y.mul_(m), coef

    def lossless(self, rows: int = 8, columns: int = 4096, seed: int = 0) -> bool:
        """fbgemm's int8 logits of grid-rounded inputs equal the exact integer products (so the bound
        holds), on random inputs with outlying channels like real hidden states, over `columns`
        vocabulary rows spread across the vocabulary (the activation side is what is checked)."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(rows, self.weight.shape[1], generator=g)
        x[:, : x.shape[1] // 16] *= 30
        approx, _ = self._approx(x)
        cols = torch.linspace(0, self.weight.shape[0] - 1, min(columns, self.weight.shape[0])).long()
        kept = x if self.int8.keep_mask is None else x * self.int8.keep_mask
        m = row_absmax(kept)[:, 0]
        u_hat, _ = grid_round(kept / m[:, None])
        qw, scale = self.int8.int8_weight()
        want = (u_hat.double() @ qw[cols].double().T) * scale[cols].double() * m.double()[:, None]
        if self.int8.outliers is not None:
            want += x.index_select(1, self.int8.outliers).double() @ self.int8.w_outliers_t[:, cols].double()
        err = (approx[:, cols].double() - want).abs()
        return bool((err <= 1e-5 * want.abs().amax(-1, keepdim=True) + 1e-6).all())


def grid_round(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u: [T, d] -> (û: u rounded to the 7-bit grid that fbgemm's dynamic quantization picks for
    it (`activation_grid`), and a [1, d] row holding the grid's lowest and highest values, so the
    grid of [û; ends] is the same)."""
    u_hat, step, zero = activation_grid(u)
    ends = u.new_zeros(1, u.shape[1])
    ends[0, 0], ends[0, -1] = -zero * step, (127 - zero) * step
    return u_hat, ends


@dataclass(frozen=True)
class Scores:
    """Log-probabilities of S scored rows (fp32)."""

    logprobs: torch.Tensor          # [S] log p(target) of each row
    top_ids: torch.Tensor           # [S, k] the k most likely tokens, most likely first
    top_logprobs: torch.Tensor      # [S, k] their log-probs

    def __getitem__(self, rows: slice) -> Scores:
        return Scores(self.logprobs[rows], self.top_ids[rows], self.top_logprobs[rows])


def score_rows(head: nn.Module, h: torch.Tensor, targets: torch.Tensor, k: int,
               softcap: float | None = None) -> Scores:
    """h: [S, d] hidden states, targets: [S] -> log_softmax(head(h)) at `targets` and its top k, in
    fp32, SCORE_CHUNK rows at a time (the [S, V] logits never exist at once). `softcap`: the model's
    final logit soft-capping (cap · tanh(logits / cap)), which the model applies after the head."""
    lps, ids, tops = [], [], []
    for lo in range(0, h.shape[0], SCORE_CHUNK):
        logits = head(h[lo:lo + SCORE_CHUNK]).float()                          # [c, V]
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logp = torch.log_softmax(logits, dim=-1)
        lps.append(logp.gather(1, targets[lo:lo + SCORE_CHUNK, None])[:, 0])
        top = logp.topk(k, dim=-1) if k else None
        ids.append(top.indices if top else torch.zeros(len(logp), 0, dtype=torch.long))
        tops.append(top.values if top else logp.new_zeros(len(logp), 0))
    return Scores(torch.cat(lps), torch.cat(ids), torch.cat(tops))


@dataclass(frozen=True)
class HeadResult:
    """What the head found out in one forward, besides the logits it returned."""

    finite: torch.Tensor            # [K] bool: the row's hidden state is finite (NaN/inf rows are unusable)
    tokens: torch.Tensor | None     # [K] each screened row's greedy token, -1 elsewhere; None: no row screened
    scores: Scores | None = None    # the scored rows' log-probs, in row order; None: no row scored


class ServeHead(nn.Module):
    """The engine's output layer. It checks every kept row's hidden state for NaN/inf first (a
    non-finite row would poison the int8 screen's shared activation grid, and its tokens mean
    nothing). With a context whose `score` is set, it computes those rows' log-probs itself
    (`score_rows`); with `greedy_rows` ([K] bool over the kept positions) set and a `screen`, it
    screens the finite greedy rows' tokens. It returns `full`'s logits of the other rows only
    ([1, K - G - S, V], in row order). The runner collects the rest with `take` after the forward."""

    def __init__(self, full: nn.Module, screen: ScreenedArgmax | None = None, softcap: float | None = None):
        super().__init__()
        self.full, self.screen, self.softcap = full, screen, softcap
        self.serve_ctx = None
        self._result: HeadResult | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.serve_ctx
        if ctx is None:
            return self.full(x)
        h = x.reshape(-1, x.shape[-1])                                          # [K, d]
        finite = torch.isfinite(h).all(-1)                                      # [K]
        rest = torch.ones_like(finite)
        scores = tokens = None
        if ctx.score is not None:
            scores = score_rows(self.full, h[ctx.score.rows], ctx.score.targets, ctx.score.k, self.softcap)
            rest &= ~ctx.score.rows
        greedy = ctx.greedy_rows if self.screen is not None else None
        if greedy is not None:
            pick = greedy & finite
            tokens = torch.full((h.shape[0],), -1, dtype=torch.long)
            if pick.any():
                tokens[pick] = self.screen(h[pick])
            rest &= ~greedy
        self._result = HeadResult(finite, tokens, scores)
        if bool(rest.all()):
            return self.full(x)
        if not bool(rest.any()):                   # nothing left: skip the head's empty blocks
            return h.new_empty(1, 0, self.full.out_features)
        return self.full(h[rest][None])

    def take(self) -> HeadResult:
        """The result of the forward that just ran (once)."""
        result, self._result = self._result, None
        assert result is not None, "the head did not run in this forward"
        return result


def install_head(model: nn.Module, tokenizer, screen: bool = True) -> ServeHead:
    """Wrap `model`'s output layer in a ServeHead (in place). It screens greedy tokens (`screen`)
    only when that is exact: an fp32 head without bias and without logit soft-capping (whose fp32
    tanh can tie distinct logits), on an fbgemm build that passes `lossless`. Its outlier channels
    come from general text (`calibrate`), like `--quantize int8`'s."""
    from loraops.lora.inject import set_submodule

    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    screened = None
    if screen and (weight is not None and weight.dtype == torch.float32 and getattr(head, "bias", None) is None
                   and getattr(model.config.get_text_config(), "final_logit_softcapping", None) is None):
        screened = ScreenedArgmax(weight, head_outliers(model, tokenizer))
        if not screened.lossless():
            log.warning("fbgemm's int8 kernel does not reproduce the rounding the exact greedy screen relies "
                        "on; greedy tokens use the fp32 head")
            screened = None
    path = next(p for p, m in model.named_modules() if m is head)
    wrapped = ServeHead(head, screened, getattr(model.config.get_text_config(), "final_logit_softcapping", None))
    set_submodule(model, path, wrapped)
    return wrapped


def head_outliers(model: nn.Module, tokenizer) -> torch.Tensor:
    """The output layer's largest input channels on general text (`calibrate`, like
    `--quantize int8`'s): the ones ScreenedArgmax keeps in fp32. -> [k] sorted channel ids."""
    from loraops.models.quantize import OUTLIER_CHANNELS, calibrate, general_calibration

    head = model.get_output_embeddings()
    stats = calibrate(model, general_calibration(tokenizer, texts=4, max_tokens=128), only=head)
    absmax = stats[next(iter(stats))]
    return absmax.topk(min(OUTLIER_CHANNELS, len(absmax) // 4)).indices.sort().values
