import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from loraops.lora import LoRAConfig, LoRALinear, inject, lora_modules, remove, trainable_parameters
from tiny import tiny_llama, input_ids


def test_default_init_is_a_no_op():
    model = tiny_llama()
    ids = input_ids()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        inject(model, LoRAConfig(r=4, target_modules="all-linear"))
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)


def test_forward_matches_the_formula():
    torch.manual_seed(0)
    lin = nn.Linear(8, 6)
    layer = LoRALinear(lin, r=2, scale=3.0, init="random")
    x = torch.randn(4, 8)
    expected = lin(x) + 3.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_conv1d_is_handled_transposed():
    torch.manual_seed(0)
    conv = Conv1D(6, 8)  # nf=out, nx=in; weight [in, out]
    layer = LoRALinear(conv, r=2, scale=1.0, init="random")
    x = torch.randn(3, 8)
    expected = conv(x) + (x @ layer.lora_A.T) @ layer.lora_B.T
    assert layer.lora_A.shape == (2, 8) and layer.lora_B.shape == (6, 2)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_rslora_scale_is_alpha_over_sqrt_r():
    assert LoRAConfig(r=16, alpha=8, use_rslora=True).scale(16, 8) == pytest.approx(8 / math.sqrt(16))
    assert LoRAConfig(r=16, alpha=8).scale(16, 8) == pytest.approx(0.5)


def test_only_lora_parameters_train():
    model = tiny_llama()
    inject(model, LoRAConfig(r=4, target_modules=["q_proj"]))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    assert len(trainable_parameters(model)) == len(names)


def test_dropout_only_acts_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=2, scale=1.0, dropout=0.5, init="random")
    x = torch.randn(64, 8)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_remove_restores_plain_modules():
    model = tiny_llama()
    inject(model, LoRAConfig(r=4, target_modules="all-linear"))
    remove(model)
    assert not lora_modules(model)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)


def test_gradients_flow_to_lora_only():
    model = tiny_llama()
    inject(model, LoRAConfig(r=4, target_modules=["q_proj", "v_proj"], init="random"))
    model(input_ids=input_ids()).logits.sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
