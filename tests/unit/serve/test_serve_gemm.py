"""The engine's decode-shaped fp32 linears (serve/gemm.py) against plain F.linear."""

import pytest
import torch
from torch import nn
from tiny import tiny_llama

from loraops.models.quantize import Int8Linear
from loraops.serve import gemm
from loraops.serve.gemm import (DecodeLinear, PackedLinear, install_decode_linears, linear_reference,
                                onednn_available, rows_first_linear)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def test_rows_first_linear_matches_the_reference():
    """Token counts below, at and between the multiples of 16 that x is zero-padded to."""
    torch.manual_seed(0)
    weight, bias = torch.randn(300, 48), torch.randn(300)
    for tokens in (1, 4, 5, 12, 16, 21, 33, 64):
        x = torch.randn(1, tokens, 48)                                  # the engine's packed [1, T, in]
        want = linear_reference(x, weight, bias)
        for block in (None, 64, 128, 1000):                             # blocks that do and do not divide 300
            got = rows_first_linear(x, weight, bias, block)
            assert got.shape == want.shape and got.is_contiguous()
            assert torch.allclose(got, want, atol=1e-5), (tokens, block)
    assert torch.allclose(rows_first_linear(x, weight, None), linear_reference(x, weight, None), atol=1e-5)


def test_decode_linear_shares_the_weight_and_uses_f_linear_for_large_steps(monkeypatch):
    lin = nn.Linear(32, 40)
    layer = DecodeLinear(lin)
    assert layer.weight is lin.weight and layer.bias is lin.bias and layer.block is None
    calls = []
    monkeypatch.setattr(gemm, "rows_first_linear", lambda *a: calls.append(1) or linear_reference(*a[:3]))
    for tokens in (1, gemm.MAX_TOKENS, gemm.MAX_TOKENS + 1):
        x = torch.randn(tokens, 32)
        assert torch.allclose(layer(x), lin(x), atol=1e-5)
    assert len(calls) == 2                                              # not for MAX_TOKENS + 1


def test_wide_layers_are_done_in_blocks():
    wide = DecodeLinear(nn.Linear(8, gemm.WIDE + 1, bias=False))
    assert wide.block == gemm.HEAD_BLOCK


@needs_onednn
def test_packed_linear_matches_the_reference():
    """Token counts from a single decode token to prefill sizes, with and without a bias; packed
    shapes [1, T, in] (the engine's) and [T, in]."""
    torch.manual_seed(1)
    lin = nn.Linear(48, 300)
    layer = PackedLinear(lin)
    assert torch.equal(layer.dense_weight(), lin.weight.detach())
    with torch.no_grad():
        for tokens in (1, 3, 12, 16, 17, 64, 200):
            x = torch.randn(1, tokens, 48)
            want = linear_reference(x, lin.weight, lin.bias)
            got = layer(x)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), tokens
            assert torch.allclose(layer(x[0]), want[0], atol=1e-5)
        no_bias = nn.Linear(48, 20, bias=False)
        x = torch.randn(5, 48)
        assert torch.allclose(PackedLinear(no_bias)(x), linear_reference(x, no_bias.weight, None), atol=1e-5)


def test_install_swaps_fp32_linears_only():
    """Body linears are packed (with oneDNN), the head keeps its shared weight, int8 layers stay."""
    model = tiny_llama()
    model.model.layers[0].mlp.down_proj = Int8Linear(model.model.layers[0].mlp.down_proj)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    head_weight = model.get_output_embeddings().weight
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert install_decode_linears(model) == linears
        after = model(input_ids=ids).logits
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert isinstance(model.model.layers[0].mlp.down_proj, Int8Linear)
    head = model.get_output_embeddings()
    assert type(head) is DecodeLinear and head.weight is head_weight
    body = PackedLinear if onednn_available() else DecodeLinear
    assert type(model.model.layers[0].self_attn.q_proj) is body
    assert torch.allclose(before, after, atol=1e-5)
