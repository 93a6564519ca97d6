"""Every malformed adapter is refused with a specific error; nothing loads silently."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraops.errors import AdapterFormatError, AdapterMismatchError, UnsafeFileError
from loraops.lora import LoRAConfig, apply_adapter, extract, inject, read_adapter, save_adapter
from tiny import tiny_llama

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def adapter_dir(tmp_path):
    model = tiny_llama()
    cfg = LoRAConfig(r=4, target_modules=["q_proj", "v_proj"], init="random")
    inject(model, cfg)
    return save_adapter(extract(model, cfg, meta={"base_fingerprint": "sha256:abc"}), tmp_path / "a")


def _edit_weights(d, fn):
    sd = load_file(d / WEIGHTS)
    fn(sd)
    save_file(sd, d / WEIGHTS)


def test_round_trip_keeps_tensors_and_meta(adapter_dir):
    adapter = read_adapter(adapter_dir)
    assert adapter.meta == {"base_fingerprint": "sha256:abc"}
    assert len(adapter.modules) == 4 and all(m.r == 4 for m in adapter.modules.values())


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(AdapterFormatError, match="does not exist"):
        read_adapter(tmp_path / "nope")


def test_pickle_adapter_is_refused(tmp_path, adapter_dir):
    (adapter_dir / WEIGHTS).rename(adapter_dir / "adapter_model.bin")
    with pytest.raises(UnsafeFileError, match="pickle"):
        read_adapter(adapter_dir)


def test_corrupted_safetensors_header_is_refused(adapter_dir):
    raw = bytearray((adapter_dir / WEIGHTS).read_bytes())
    raw[8:20] = b"\x00garbage!!\xff\xfe"
    (adapter_dir / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(AdapterFormatError, match="not a valid safetensors"):
        read_adapter(adapter_dir)


def test_truncated_safetensors_is_refused(adapter_dir):
    raw = (adapter_dir / WEIGHTS).read_bytes()
    (adapter_dir / WEIGHTS).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AdapterFormatError):
        read_adapter(adapter_dir)


def test_invalid_config_json_is_refused(adapter_dir):
    (adapter_dir / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFormatError, match="not valid JSON"):
        read_adapter(adapter_dir)


def test_non_lora_peft_type_is_refused(adapter_dir):
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    (adapter_dir / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(AdapterFormatError, match="not a LoRA"):
        read_adapter(adapter_dir)


def test_half_a_module_is_refused(adapter_dir):
    _edit_weights(adapter_dir, lambda sd: sd.pop("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"))
    with pytest.raises(AdapterFormatError, match="has lora_A but not lora_B"):
        read_adapter(adapter_dir)


def test_rank_mismatch_between_a_and_b_is_refused(adapter_dir):
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    _edit_weights(adapter_dir, lambda sd: sd.__setitem__(key, torch.zeros(32, 3)))
    with pytest.raises(AdapterFormatError, match="rank mismatch"):
        read_adapter(adapter_dir)


def test_unexpected_tensor_is_refused(adapter_dir):
    _edit_weights(adapter_dir, lambda sd: sd.__setitem__("base_model.model.lm_head.weight", torch.zeros(2, 2)))
    with pytest.raises(AdapterFormatError, match="unexpected tensor"):
        read_adapter(adapter_dir)


def test_missing_module_weights_are_refused(adapter_dir):
    def drop(sd):
        for part in ("lora_A", "lora_B"):
            sd.pop(f"base_model.model.model.layers.1.self_attn.v_proj.{part}.weight")
    _edit_weights(adapter_dir, drop)
    with pytest.raises(AdapterMismatchError, match="missing weights"):
        apply_adapter(tiny_llama(), read_adapter(adapter_dir))


def test_extra_module_weights_are_refused(adapter_dir):
    def add(sd):
        sd["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = torch.zeros(4, 32)
        sd["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"] = torch.zeros(64, 4)
    _edit_weights(adapter_dir, add)
    with pytest.raises(AdapterMismatchError, match="does not have or its config does not target"):
        apply_adapter(tiny_llama(), read_adapter(adapter_dir))


def test_shape_mismatch_with_base_is_refused(adapter_dir):
    from transformers import LlamaConfig, LlamaForCausalLM
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=384, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(AdapterMismatchError, match="adapter is for a"):
        apply_adapter(wider, read_adapter(adapter_dir))


def test_adapter_for_a_deeper_base_is_refused(adapter_dir):
    from transformers import LlamaConfig, LlamaForCausalLM
    deeper = LlamaForCausalLM(LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(AdapterMismatchError, match="missing weights for 2"):
        apply_adapter(deeper, read_adapter(adapter_dir))


def test_failed_save_leaves_no_partial_directory(tmp_path, monkeypatch):
    import loraops.lora.peft_format as pf
    model = tiny_llama()
    cfg = LoRAConfig(r=2, target_modules=["q_proj"])
    inject(model, cfg)
    adapter = extract(model, cfg)

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(pf, "save_file", boom)
    with pytest.raises(OSError):
        save_adapter(adapter, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
