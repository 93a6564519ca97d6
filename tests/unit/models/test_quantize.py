"""Int8Linear (fbgemm dynamic int8, fp32 outlier channels) against its plain-torch twin, fp32, and
under LoRA training; calibration picks the outlier channels."""

import torch
from torch import nn

from loraops.lora import LoRAConfig, LoRALinear, inject, lora_modules, trainable_parameters
from loraops.models.quantize import (WEIGHT_ONLY_LAYERS, Int8Linear, calibrate, full_range_activations,
                                     int8_linear_reference, is_quantized, quantize_for_inference_, quantize_int8_,
                                     smoothing)
from tiny import input_ids, tiny_gemma3, tiny_llama, tiny_tokenizer


def _linear(seed=0, i=64, o=48):
    torch.manual_seed(seed)
    return nn.Linear(i, o)


def _assert_matches_reference(q: Int8Linear, x: torch.Tensor) -> None:
    levels = 255 if q.full_range else 127
    ref = int8_linear_reference(x, *q.int8_weight(), q.bias, q.outliers,
                                None if q.outliers is None else q.w_outliers_t.T, q.smooth, levels)
    # After per-token scaling each row's absmax element sits on a half step of the activation grid,
    # which fbgemm and the reference may round to neighbouring levels: at most one level of one
    # element per row, i.e. |diff[t, o]| <= step_t * max_j |W[o, j]| (over the quantized channels).
    xq = x if q.outliers is None else x.index_fill(-1, q.outliers, 0.0)
    xq = xq if q.smooth is None else xq / q.smooth
    qw, scale = q.int8_weight()
    step = xq.abs().amax(-1, keepdim=True) * 2 / levels                   # [T, 1]
    bound = step * (qw.float() * scale[:, None]).abs().amax(1)[None, :]   # [T, out]
    assert ((q(x) - ref).abs() <= 1.01 * bound + 1e-5).all()
    assert ((q(x) - ref).norm() / ref.norm()).item() < 1e-2


def test_int8_kernel_matches_reference():
    _assert_matches_reference(Int8Linear(_linear()), torch.randn(7, 64))


def test_int8_kernel_with_outlier_channels_matches_reference():
    outliers = torch.tensor([3, 17, 40])
    x = torch.randn(2, 7, 64)                                              # batched input: [..., in]
    x[..., outliers] *= 80.0
    q = Int8Linear(_linear(), outliers=outliers)
    _assert_matches_reference(q, x)
    qw, _ = q.int8_weight()
    assert (qw[:, outliers] == 0).all()                                    # held in fp32 instead


def test_smoothed_kernel_matches_reference_at_7_and_8_bits():
    lin = _linear()
    x = torch.randn(2, 7, 64)
    x[..., [3, 40]] *= 30.0
    s = smoothing(x.abs().reshape(-1, 64).amax(0), lin.weight)
    for full in ((False, True) if full_range_activations() else (False,)):
        q = Int8Linear(lin, smooth=s, full_range=full)
        _assert_matches_reference(q, x)
        _, scale = q.int8_weight()                     # W·s rounded per row: half a step, undone by s
        bound = scale[:, None] / 2 / s[None, :]
        assert ((q.dequantize_weight() - lin.weight.detach()).abs() <= bound * 1.001 + 1e-7).all()


def test_smoothing_keeps_large_channels_from_wrecking_the_rest():
    """A few input channels ~30x the others in every token: per-token 8-bit quantization sizes its
    grid to them; moving half their range into the weights (SmoothQuant) keeps the product accurate."""
    lin = _linear()
    x = torch.randn(16, 64)
    x[:, [5, 30]] *= 30.0
    exact = lin(x)
    err = lambda q: ((q(x) - exact).norm() / exact.norm()).item()  # noqa: E731
    plain = err(Int8Linear(lin))
    smoothed = err(Int8Linear(lin, smooth=smoothing(x.abs().amax(0), lin.weight)))
    assert smoothed < plain / 2


def test_outlier_channels_in_fp32_keep_the_other_channels_accurate():
    """The same few channels are ~50x larger in every token (as in Gemma): per-token scaling alone
    sizes the 7-bit grid to them and rounds the rest away; multiplying them in fp32 does not."""
    lin = _linear()
    outliers = torch.tensor([5, 30])
    x = torch.randn(16, 64)
    x[:, outliers] *= 50.0
    exact = lin(x)
    err = lambda q: ((q(x) - exact).norm() / exact.norm()).item()  # noqa: E731
    plain, split = err(Int8Linear(lin)), err(Int8Linear(lin, outliers=outliers))
    assert split < 0.02 and split < plain / 3


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


def test_weight_only_inference_kernel_matches_the_dequantized_fp32_reference():
    """Decode-sized inputs go through `_weight_int8pack_mm` (bf16 activations, bf16 out); larger
    ones through the dequantized fp32 weight, exactly as in training."""
    q = Int8Linear(_linear(), weight_only=True)
    for tokens in (1, 7, 32, 33, 100):
        x = torch.randn(1, tokens, 64)
        exact = torch.nn.functional.linear(x, q.dequantize_weight(), q.bias)
        with torch.no_grad():
            got = q(x)
        assert got.shape == exact.shape
        if tokens > 32:
            assert torch.allclose(got, exact, atol=1e-5)
        else:  # two bf16 roundings (input, output): relative error a few 2^-8
            assert ((got - exact).norm() / exact.norm()).item() < 1e-2
            assert not torch.equal(got, exact)                 # it really is the bf16 kernel


def test_calibration_picks_the_largest_input_channels():
    model = tiny_llama()
    stats = calibrate(model, [input_ids(1, 10, seed=s) for s in range(3)])
    seen = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda m, i, o, p=p: seen.__setitem__(p, torch.maximum(seen.get(p, torch.zeros(i[0].shape[-1])),
                                                             i[0].abs().reshape(-1, i[0].shape[-1]).amax(0))))
        for p in stats]
    with torch.no_grad():
        for s in range(3):
            model(input_ids=input_ids(1, 10, seed=s))
    for h in hooks:
        h.remove()
    assert set(stats) == {p for p, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert all(torch.equal(stats[p], seen[p]) for p in stats)
    quantize_int8_(model, activation_absmax=stats, outlier_channels=4)
    q_proj = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert set(q_proj.outliers.tolist()) == set(stats["model.layers.0.self_attn.q_proj"].topk(4).indices.tolist())
    head = model.get_output_embeddings()
    assert set(head.outliers.tolist()) == set(stats["lm_head"].topk(4).indices.tolist())


def test_quantize_for_inference_is_a_smoothed_w8a8_body_and_a_calibrated_w8a8_head():
    """The body W8A8 and smoothed (8-bit activations with VNNI), down_proj weight-only; the head
    W8A8 with fp32 outlier channels."""
    for build in (tiny_llama, tiny_gemma3):
        ref, model = build(), build()
        paths = quantize_for_inference_(model, tiny_tokenizer())
        body = {p: m for p, m in model.named_modules() if isinstance(m, Int8Linear) and p != "lm_head"}
        head = model.get_output_embeddings()
        assert "lm_head" in paths and body and all(m.outliers is None for m in body.values())
        for p, m in body.items():
            if p.endswith(WEIGHT_ONLY_LAYERS):
                assert m.weight_only
            else:
                assert not m.weight_only and m.smooth is not None and m.full_range == full_range_activations()
        assert not head.weight_only and head.outliers is not None and head.smooth is None
        with torch.no_grad():
            a, b = ref(input_ids=input_ids()).logits, model(input_ids=input_ids()).logits
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item() > 0.99


def test_backward_uses_dequantized_weights():
    q = Int8Linear(_linear(), outliers=torch.tensor([1, 2]))
    assert torch.equal(q.dequantize_weight()[:, [1, 2]], _linear().weight.detach()[:, [1, 2]])
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
