import pytest

from loraops.errors import BaseMismatchError, ModelNotFoundError, UnsafeFileError
from loraops.lora import LoRAConfig, extract, inject, lora_modules, save_adapter
from loraops.models import fingerprint_dir, fingerprint_module, load_adapter_onto, resolve_base
from tiny import save_tiny, tiny_gemma3, tiny_llama


def test_fingerprint_of_model_and_its_saved_dir_agree(tmp_path):
    for arch, build in (("llama", tiny_llama), ("gemma3", tiny_gemma3)):
        d = save_tiny(tmp_path / arch, arch)
        assert fingerprint_dir(d) == fingerprint_module(build())


def test_fingerprint_changes_when_one_weight_changes(tmp_path):
    a, b = tiny_llama(), tiny_llama()
    b.model.norm.weight.data[0] += 1e-3
    assert fingerprint_module(a) != fingerprint_module(b)


def test_fingerprint_is_cached_and_invalidated(tmp_path):
    d = save_tiny(tmp_path / "m")
    fp = fingerprint_dir(d)
    assert (d / ".loraops-fingerprint.json").exists() and fingerprint_dir(d) == fp
    save_tiny(d, seed=1)  # rewrite the weights: the cache must not answer
    assert fingerprint_dir(d) != fp


def test_unknown_base_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a known name"):
        resolve_base(str(tmp_path / "missing"))


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_base(str(tmp_path))


def test_pickle_base_is_refused(tmp_path):
    d = save_tiny(tmp_path / "m")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(UnsafeFileError):
        resolve_base(str(d))


def _adapter(tmp_path, fingerprint):
    model = tiny_llama()
    cfg = LoRAConfig(r=2, target_modules=["q_proj"], init="random")
    inject(model, cfg)
    meta = {"base_fingerprint": fingerprint, "base_name": "other"} if fingerprint else {}
    return save_adapter(extract(model, cfg, meta=meta), tmp_path / "adapter")


def test_adapter_for_another_base_is_refused_naming_both(tmp_path):
    info = resolve_base(str(save_tiny(tmp_path / "m")))
    with pytest.raises(BaseMismatchError, match=r"other \(0123456789ab\).*m \("):
        load_adapter_onto(tiny_llama(), info, str(_adapter(tmp_path, "sha256:0123456789abcdef")))


def test_force_loads_a_mismatched_adapter_and_records_it(tmp_path):
    info = resolve_base(str(save_tiny(tmp_path / "m")))
    model = tiny_llama()
    adapter = load_adapter_onto(model, info, str(_adapter(tmp_path, "sha256:0123")), force=True)
    assert adapter.meta["forced_base"] == info.fingerprint and lora_modules(model)


def test_adapter_without_fingerprint_is_checked_by_shape(tmp_path, caplog):
    info = resolve_base(str(save_tiny(tmp_path / "m")))
    model = tiny_llama()
    load_adapter_onto(model, info, str(_adapter(tmp_path, None)))
    assert lora_modules(model) and "no base fingerprint" in caplog.text
