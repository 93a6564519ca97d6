"""Int8Linear (fbgemm dynamic int8) against its plain-torch twin, fp32, and under LoRA training."""

import torch
from torch import nn

from loraops.lora import LoRAConfig, LoRALinear, inject, lora_modules, trainable_parameters
from loraops.models.quantize import Int8Linear, int8_linear_reference, is_quantized, quantize_int8_
from tiny import input_ids, tiny_gemma3, tiny_llama


def _linear(seed=0, i=64, o=48):
    torch.manual_seed(seed)
    return nn.Linear(i, o)


def test_int8_kernel_matches_reference():
    lin = _linear()
    q = Int8Linear(lin)
    x = torch.randn(7, 64)
    ref = int8_linear_reference(x, *q.int8_weight(), q.bias)
    # After per-token scaling each row's absmax element sits on a half step of the 7-bit grid, which
    # fbgemm and the reference may round to neighbouring levels: at most one level of one element
    # per row, i.e. |diff[t, o]| <= step_t * max_j |W[o, j]|.
    qw, scale = q.int8_weight()
    step = x.abs().amax(-1, keepdim=True) * 2 / 127                       # [T, 1]
    bound = step * (qw.float() * scale[:, None]).abs().amax(1)[None, :]   # [T, out]
    assert ((q(x) - ref).abs() <= 1.01 * bound + 1e-5).all()
    assert ((q(x) - ref).norm() / ref.norm()).item() < 1e-2


def test_int8_is_close_to_fp32():
    lin = _linear()
    x = torch.randn(7, 64)
    exact = lin(x)
    rel = (Int8Linear(lin)(x) - exact).norm() / exact.norm()
    assert rel.item() < 0.03


def test_a_token_with_huge_activations_does_not_wreck_the_others():
    """Gemma's first token carries activations ~100x the others' (an attention sink); quantizing
    the whole input with one scale rounded every other row to a few levels. Per-token scaling keeps
    each row as accurate as if it were alone."""
    lin = _linear()
    x = torch.randn(7, 64)
    x[0] *= 300.0
    q = Int8Linear(lin)
    exact = lin(x)
    rel = (q(x)[1:] - exact[1:]).norm() / exact[1:].norm()
    alone = (q(x[1:]) - exact[1:]).norm() / exact[1:].norm()
    assert rel.item() < 0.03 and rel.item() <= alone.item() * 1.5


def test_quantized_model_keeps_its_predictions():
    for build in (tiny_llama, tiny_gemma3):
        ref, model = build(), build()
        paths = quantize_int8_(model)
        assert is_quantized(model) and "lm_head" in paths
        with torch.no_grad():
            a, b = ref(input_ids=input_ids()).logits, model(input_ids=input_ids()).logits
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos.item() > 0.99


def test_lora_on_int8_base_adds_the_fp32_lora_term():
    q = Int8Linear(_linear())
    layer = LoRALinear(q, r=4, scale=2.0, init="random")
    x = torch.randn(5, 64)
    expected = q(x) + 2.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_backward_uses_dequantized_weights():
    q = Int8Linear(_linear())
    x = torch.randn(5, 64, requires_grad=True)
    g = torch.randn(5, 48)
    q(x).backward(g)
    assert torch.allclose(x.grad, g @ q.dequantize_weight(), atol=1e-6)


def test_lora_trains_over_an_int8_base():
    model = tiny_llama()
    quantize_int8_(model)
    inject(model, LoRAConfig(r=4, target_modules="all-linear", init="random"))
    loss = model(input_ids=input_ids(), labels=input_ids()).loss
    loss.backward()
    params = trainable_parameters(model)
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert all(isinstance(m.base, Int8Linear) for m in lora_modules(model).values())


def test_merge_into_int8_base_is_refused():
    layer = LoRALinear(Int8Linear(_linear()), r=2, scale=1.0)
    try:
        layer.merge_()
    except TypeError as e:
        assert "quantized" in str(e)
    else:
        raise AssertionError("merge into int8 should be refused")
