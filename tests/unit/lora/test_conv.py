import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loraops.errors import TargetNotFoundError, UnsafeFileError
from loraops.lora import LoRAConfig, inject, lora_modules, merge_state_dict, unmerge_state_dict
from loraops.lora.conv import LoRAConv
from loraops.lora.convert import read_any


def _conv2d(**kw):
    torch.manual_seed(0)
    return nn.Conv2d(6, 5, 3, stride=2, padding=1, **kw)


def test_forward_is_the_conv_with_the_merged_kernel():
    base = _conv2d()
    layer = LoRAConv(base, r=2, scale=1.5, init="random")
    x = torch.randn(2, 6, 9, 9)
    delta = 1.5 * (layer.lora_B.flatten(1) @ layer.lora_A.flatten(1)).view_as(base.weight)
    expected = F.conv2d(x, base.weight + delta, base.bias, stride=2, padding=1)
    assert layer.lora_A.shape == (2, 6, 3, 3) and layer.lora_B.shape == (5, 2, 1, 1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_conv1d_works_the_same_way():
    torch.manual_seed(0)
    base = nn.Conv1d(4, 3, 5, padding=2)
    layer = LoRAConv(base, r=2, scale=1.0, init="random")
    x = torch.randn(2, 4, 11)
    delta = (layer.lora_B.flatten(1) @ layer.lora_A.flatten(1)).view_as(base.weight)
    assert torch.allclose(layer(x), F.conv1d(x, base.weight + delta, base.bias, padding=2), atol=1e-5)


def test_default_init_is_a_no_op():
    base = _conv2d()
    x = torch.randn(1, 6, 8, 8)
    assert torch.equal(LoRAConv(base, r=4, scale=2.0)(x), base(x))


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_and_unmerge_are_exact_in_fp32(use_dora):
    layer = LoRAConv(_conv2d(), r=3, scale=2.0, init="random", use_dora=use_dora)
    with torch.no_grad():
        if use_dora:
            layer.magnitude.mul_(1.1)
    x = torch.randn(2, 6, 8, 8)
    before, weight = layer(x), layer.base.weight.detach().clone()
    layer.merge_()
    assert torch.allclose(layer(x), before, atol=1e-5)
    layer.unmerge_()
    assert torch.allclose(layer.base.weight, weight, atol=1e-6) and torch.allclose(layer(x), before, atol=1e-6)


def test_merge_state_dict_folds_conv_kernels_and_unmerges_them():
    model = nn.Sequential(_conv2d(), nn.ReLU(), nn.Conv2d(5, 4, 1))
    cfg = LoRAConfig(r=2, target_modules=["0", "2"], init="random", task_type=None)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    inject(model, cfg)
    from loraops.lora import extract

    adapter = extract(model, cfg)
    merged = merge_state_dict(base_sd, adapter)
    plain = nn.Sequential(_conv2d(), nn.ReLU(), nn.Conv2d(5, 4, 1))
    plain.load_state_dict(merged)
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5)
    restored = unmerge_state_dict(merged, adapter)
    assert all(torch.allclose(restored[k], base_sd[k], atol=1e-6) for k in base_sd)


def test_all_linear_leaves_convs_alone_and_named_convs_are_adapted():
    model = nn.Sequential(_conv2d(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
    inject(model, LoRAConfig(target_modules="all-linear", task_type=None))
    assert list(lora_modules(model)) == ["2"]
    model = nn.Sequential(_conv2d(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
    inject(model, LoRAConfig(target_modules=["0"], task_type=None))
    assert isinstance(model[0], LoRAConv)


@pytest.mark.parametrize("kw", [{"groups": 2}, {"dilation": 2}, {"padding_mode": "reflect"}])
def test_convs_peft_cannot_merge_are_refused(kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 4, 3, padding=2, **kw))
    with pytest.raises(TargetNotFoundError, match="groups=1, dilation=1"):
        inject(model, LoRAConfig(target_modules=["0"], task_type=None))


@pytest.mark.parametrize("name", ["lora.ckpt", "lora.pt", "pytorch_lora_weights.bin"])
def test_pickle_lora_files_are_refused(name, tmp_path):
    (tmp_path / name).write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeFileError, match="pickle"):
        read_any(tmp_path / name, set())
