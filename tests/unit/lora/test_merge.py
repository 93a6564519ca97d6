"""Merged weights are the fast path; the LoRALinear forward is its plain-torch twin."""

import pytest
import torch

from loraops.lora import LoRAConfig, extract, inject, lora_modules, merge_state_dict, unmerge_state_dict
from loraops.lora.adapter import ModuleLoRA
from loraops.lora.merge import lora_delta, merge_weight, unmerge_weight
from tiny import BUILDERS, input_ids


def _adapted(arch, **kw):
    torch.manual_seed(3)
    model = BUILDERS[arch]()
    cfg = LoRAConfig(r=4, alpha=8, target_modules="all-linear", init="random", **kw)
    inject(model, cfg)
    if kw.get("use_dora"):
        with torch.no_grad():
            for m in lora_modules(model).values():
                m.magnitude.mul_(1.1)
    return model, extract(model, cfg)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("dora", [False, True])
def test_merged_state_dict_reproduces_adapter_logits(arch, dora):
    adapted, adapter = _adapted(arch, use_dora=dora)
    merged = BUILDERS[arch]()
    merged.load_state_dict(merge_state_dict(merged.state_dict(), adapter))
    ids = input_ids()
    with torch.no_grad():
        diff = (adapted(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unmerge_restores_base_weights(arch):
    _, adapter = _adapted(arch)
    base = BUILDERS[arch]().state_dict()
    restored = unmerge_state_dict(merge_state_dict(base, adapter), adapter)
    for key, w in base.items():
        assert torch.allclose(restored[key], w, atol=1e-6, rtol=0), key


def test_merge_does_not_modify_its_input():
    _, adapter = _adapted("llama")
    base = BUILDERS["llama"]().state_dict()
    before = {k: v.clone() for k, v in base.items()}
    merge_state_dict(base, adapter)
    assert all(torch.equal(before[k], base[k]) for k in base)


def test_merge_of_bf16_weight_is_computed_in_fp32():
    torch.manual_seed(0)
    w = torch.randn(16, 8).to(torch.bfloat16)
    lora = ModuleLoRA(torch.randn(2, 8) * 1e-2, torch.randn(16, 2) * 1e-2, 2.0)
    merged = merge_weight(w, lora)
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, (w.float() + lora_delta(lora.A, lora.B, 2.0)).to(torch.bfloat16))


def test_dora_merge_cannot_be_undone_from_merged_weight():
    lora = ModuleLoRA(torch.randn(2, 8), torch.randn(16, 2), 1.0, magnitude=torch.ones(16))
    with pytest.raises(ValueError, match="DoRA"):
        unmerge_weight(torch.randn(16, 8), lora)


@pytest.mark.parametrize("dora", [False, True])
def test_in_place_merge_and_unmerge_of_layers(dora):
    model, _ = _adapted("llama", use_dora=dora)
    ids = input_ids()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        weights = {p: m.base.weight.clone() for p, m in lora_modules(model).items()}
        for m in lora_modules(model).values():
            m.merge_()
        merged = model(input_ids=ids).logits
        for m in lora_modules(model).values():
            m.unmerge_()
    assert (merged - before).abs().max().item() <= 1e-5
    for p, m in lora_modules(model).items():
        assert torch.allclose(m.base.weight, weights[p], atol=1e-6, rtol=0)
