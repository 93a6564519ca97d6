"""PEFT is the oracle: adapters cross between PEFT and loraops with identical logits, keys and config."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from loraops.lora import LoRAConfig, apply_adapter, extract, inject, read_adapter, save_adapter
from tiny import BUILDERS, input_ids

TARGETS = {
    "llama": ["q_proj", "v_proj", "down_proj"],
    "gemma3": ["q_proj", "k_proj", "o_proj", "gate_proj"],
    "gpt2": ["c_attn", "c_proj"],  # GPT-2 Conv1D: weights stored [in, out]
    "bert": ["query", "value"],
}
VARIANTS = {
    "plain": {},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
    "all-linear": {"target_modules": "all-linear"},
    "regex": {"target_modules": r".*\.(q_proj|c_attn|query)"},
    "layer1": {"layers_to_transform": [1]},
    "rank_pattern": {"rank_pattern": {"v_proj": 2, "c_proj": 2, "value": 2, "k_proj": 2}, "alpha_pattern": {"v_proj": 3.0}},
}
CASES = [(arch, var) for arch in BUILDERS for var in VARIANTS]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _peft_config(arch, variant):
    kw = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS[arch], "init_lora_weights": False}
    kw.update(VARIANTS[variant])
    if arch == "bert":
        kw["task_type"] = "SEQ_CLS"
    else:
        kw["task_type"] = "CAUSAL_LM"
    return LoraConfig(**kw)


def _our_config(arch, variant):
    kw = {"r": 4, "alpha": 8, "target_modules": TARGETS[arch], "init": "random",
          "task_type": "SEQ_CLS" if arch == "bert" else "CAUSAL_LM",
          "modules_to_save": ["classifier"] if arch == "bert" else None}
    for k, v in VARIANTS[variant].items():
        kw[k] = v
    return LoRAConfig(**kw)


def _peft_adapter(arch, variant, tmp_path):
    torch.manual_seed(123)
    model = get_peft_model(BUILDERS[arch](), _peft_config(arch, variant))
    with torch.no_grad():  # make the DoRA magnitudes and BERT head differ from their init
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.save_pretrained(tmp_path / "peft")
    return model, tmp_path / "peft"


@pytest.mark.parametrize("arch,variant", CASES)
def test_peft_adapter_loads_with_same_logits(arch, variant, tmp_path):
    peft_model, peft_dir = _peft_adapter(arch, variant, tmp_path)
    ids = input_ids()
    ours = BUILDERS[arch]()
    apply_adapter(ours, read_adapter(peft_dir))
    assert (_logits(ours, ids) - _logits(peft_model, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch,variant", CASES)
def test_loraops_adapter_loads_in_peft_with_same_logits(arch, variant, tmp_path):
    ours = BUILDERS[arch]()
    cfg = _our_config(arch, variant)
    torch.manual_seed(7)
    inject(ours, cfg)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "magnitude" in name or name.startswith("classifier"):
                p.add_(torch.randn_like(p) * 0.05)
    save_adapter(extract(ours, cfg, meta={"base_fingerprint": "x"}), tmp_path / "ours")
    peft_model = PeftModel.from_pretrained(BUILDERS[arch](), tmp_path / "ours").eval()
    ids = input_ids()
    assert (_logits(ours.eval(), ids) - _logits(peft_model, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch,variant", CASES)
def test_saved_keys_shapes_and_config_match_peft(arch, variant, tmp_path):
    _, peft_dir = _peft_adapter(arch, variant, tmp_path)
    ours = BUILDERS[arch]()
    cfg = _our_config(arch, variant)
    inject(ours, cfg)
    save_adapter(extract(ours, cfg), tmp_path / "ours")
    theirs_sd = load_file(peft_dir / "adapter_model.safetensors")
    ours_sd = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in theirs_sd.items()}
    theirs_cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    ours_cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    for field in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "layers_to_transform", "bias",
                  "fan_in_fan_out", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern"):
        assert ours_cfg[field] == theirs_cfg[field], field
    t_targets = theirs_cfg["target_modules"]
    assert (sorted(ours_cfg["target_modules"]) == sorted(t_targets)) if isinstance(t_targets, list) \
        else ours_cfg["target_modules"] == t_targets
    existing = {name for name, _ in BUILDERS[arch]().named_modules()}  # PEFT lists heads a model may lack
    assert set(ours_cfg["modules_to_save"] or []) & existing == set(theirs_cfg["modules_to_save"] or []) & existing
