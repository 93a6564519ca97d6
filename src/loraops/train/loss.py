"""Chunked LM-head + cross-entropy: the loss without ever holding [positions, vocab] logits at once.

Gemma's vocabulary is 262k: full fp32 logits for 4k positions are 4.3 GB, and their gradient as
much again. Here the positions that carry loss go through lm_head `chunk` at a time; each chunk's
gradient (softmax - onehot) is turned into gradients for `hidden` and `weight` right away, so the
backward pass only scales stored gradients and never recomputes or keeps logits.
"""

from __future__ import annotations

import torch


def select_loss_positions(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal shift plus masking: hidden [B, T, H], labels [B, T] (aligned with input_ids)
    -> hidden [N, H] of the positions that predict a counted label, targets [N]."""
    targets = labels[:, 1:]  # position t predicts token t+1
    keep = targets != ignore_index
    return hidden[:, :-1][keep], targets[keep]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, softcap: float | None):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]  # [c, H]
            t = targets[start:start + chunk]  # [c]
            z = (h @ weight.T).float()  # [c, V]: the one big buffer; everything below reuses it
            if softcap is not None:
                tanh = torch.tanh(z / softcap)
                z = tanh * softcap
            target_logit = z.gather(1, t[:, None]).squeeze(1)  # [c]
            peak = z.amax(dim=-1, keepdim=True)  # [c, 1]
            p = z.sub_(peak).exp_()  # unnormalised softmax, in place
            norm = p.sum(dim=-1, keepdim=True)  # [c, 1]
            total += (peak.squeeze(1) + norm.squeeze(1).log() - target_logit).sum()
            if not (need_h or need_w):
                continue
            # d loss / d z = softmax(z) - onehot(t), then through the softcap: (1 - tanh²)
            g = p.div_(norm)
            g[torch.arange(len(t), device=g.device), t] -= 1
            if softcap is not None:
                g.mul_(1 - tanh * tanh)
            g = g.to(weight.dtype)
            if need_h:
                grad_h[start:start + chunk] = g @ weight  # [c, H]
            if need_w:
                grad_w += (g.T @ h).float()  # [V, H]
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        grad_w = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int = 256, softcap: float | None = None) -> torch.Tensor:
    """Sum over positions of cross_entropy(softcap(hidden @ weightᵀ), targets), memory O(chunk · V).

    hidden [N, H], weight [V, H] (lm_head), targets [N] -> scalar fp32 (a sum: the caller divides by
    the step's token count, so that gradient accumulation and data parallelism are exact).
    softcap: Gemma's final_logit_softcapping, logits = c · tanh(logits / c).
    Same value and gradients as the plain-torch
    `F.cross_entropy(softcap(hidden @ weight.T).float(), targets, reduction="sum")`.
    """
    if hidden.shape[0] == 0:
        return (hidden.sum() * 0).float() + (weight.sum() * 0).float()
    return _ChunkedLinearCrossEntropy.apply(hidden, weight.to(hidden.dtype), targets, chunk, softcap)
