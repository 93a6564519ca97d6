"""The int8-screened greedy head (head.py) gives exactly the fp32 argmax, and the engine's head
hands greedy rows tokens and other rows logits."""

import pytest
import torch
from tiny import BUILDERS, tiny_tokenizer
from torch import nn

from loraops.serve.context import ForwardContext
from loraops.serve.head import BLOCK, ScreenedArgmax, ServeHead, argmax_reference, install_head


def hidden(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Hidden-state-like rows: a few channels ~30x larger than the rest, as in Gemma's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    x[:, :3] *= 30
    return x


def weight(vocab: int, dim: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, dim, generator=g) * 0.05


@pytest.mark.parametrize("outliers", [None, torch.tensor([0, 1, 2, 7])])
@pytest.mark.parametrize("vocab", [4 * BLOCK, 1000])                # whole blocks, and a ragged last block
def test_screened_argmax_equals_the_fp32_argmax(vocab, outliers):
    w, x = weight(vocab, 48), hidden(37, 48)                          # 37 rows: three int8 chunks
    screen = ScreenedArgmax(w, outliers)
    assert screen.lossless()
    assert torch.equal(screen(x), argmax_reference(x, w))


def test_the_bound_covers_the_int8_error():
    w, x = weight(640, 48), hidden(16, 48)
    screen = ScreenedArgmax(w, torch.tensor([0, 1, 2]))
    approx, coef = screen._approx(x)
    bound = screen.bound(coef, torch.arange(640))
    err = (approx - x @ w.T).abs()
    assert (err <= bound).all()
    assert err.max() > 1e-4                                           # int8 really is approximate here


def test_near_ties_int8_cannot_see_are_decided_in_fp32():
    # Many rows a hair apart: their int8 logits tie or misorder; the fp32 check must find the best.
    w = weight(512, 48)
    x = hidden(8, 48)
    base_row = w[0].clone()
    g = torch.Generator().manual_seed(3)
    w[100:400] = base_row + 1e-4 * torch.randn(300, 48, generator=g)
    x[:] = x[0] * 0 + base_row * 40 + 0.01 * torch.randn(8, 48, generator=g)   # all aligned with those rows
    screen = ScreenedArgmax(w)
    approx, _ = screen._approx(x)
    assert not torch.equal(approx.argmax(-1), argmax_reference(x, w))          # int8 alone would be wrong
    assert torch.equal(screen(x), argmax_reference(x, w))


def test_exact_ties_go_to_the_lowest_id_like_torch_argmax():
    w = weight(300, 48)
    w[250] = w[77] = w[190]                                           # three identical rows
    x = w[190:191] * 50                                               # aligned with them: they win
    assert argmax_reference(x, w).item() == 77
    assert ScreenedArgmax(w)(x).item() == 77


def test_serve_head_gives_greedy_rows_tokens_and_the_others_logits():
    full = nn.Linear(48, 300, bias=False)
    head = ServeHead(full, ScreenedArgmax(full.weight))
    x = hidden(5, 48)[None]                                           # [1, K, d]
    assert torch.equal(head(x), full(x))                              # no context: the plain head
    ctx = ForwardContext(terms=[], spans=[], cache=None, greedy_rows=torch.tensor([True, False, True, True, False]))
    head.serve_ctx = ctx
    logits = head(x)
    assert logits.shape == (1, 2, 300)
    torch.testing.assert_close(logits[0], full(x[0, [1, 4]]))
    got = head.take()
    assert torch.equal(got.tokens[[0, 2, 3]], argmax_reference(x[0, [0, 2, 3]], full.weight))
    assert got.tokens[[1, 4]].tolist() == [-1, -1] and got.finite.all()
    ctx.greedy_rows = torch.ones(5, dtype=torch.bool)                  # all greedy: no logits at all
    assert head(x).shape == (1, 0, 300) and torch.equal(head.take().tokens, argmax_reference(x[0], full.weight))


def test_non_finite_rows_are_flagged_and_kept_out_of_the_screen():
    """A NaN row in the screen's input would set the int8 grid of every row in its chunk: it is left
    out, flagged, and the other rows get exactly the tokens they get without it."""
    full = nn.Linear(48, 300, bias=False)
    head = ServeHead(full, ScreenedArgmax(full.weight))
    x = hidden(6, 48)[None]
    x[0, 2] = float("nan")
    x[0, 4, 7] = float("inf")
    head.serve_ctx = ForwardContext(terms=[], spans=[], cache=None, greedy_rows=torch.ones(6, dtype=torch.bool))
    head(x)
    got = head.take()
    assert got.finite.tolist() == [True, True, False, True, False, True]
    ok = [0, 1, 3, 5]
    assert torch.equal(got.tokens[ok], argmax_reference(x[0, ok], full.weight))
    assert got.tokens[[2, 4]].tolist() == [-1, -1]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_install_head_wraps_fp32_heads(arch):
    model = BUILDERS[arch](0)
    head = install_head(model, tiny_tokenizer())
    assert head.screen is not None and model.get_output_embeddings() is head


def test_no_screen_for_soft_capped_logits():
    model = BUILDERS["gemma3"](0)
    model.config.final_logit_softcapping = 30.0                       # Gemma 2 style: tanh can tie logits
    head = install_head(model, tiny_tokenizer())
    assert head.screen is None and isinstance(head.full, nn.Linear)
