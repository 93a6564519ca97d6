import pytest

from loraops.errors import ConfigError, TargetNotFoundError
from loraops.lora import LoRAConfig, select_targets
from tiny import tiny_bert_cls, tiny_gpt2, tiny_llama


def test_suffix_names_select_every_layer():
    paths = select_targets(tiny_llama(), LoRAConfig(target_modules=["q_proj"]))
    assert paths == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_regex_is_a_full_match():
    paths = select_targets(tiny_llama(), LoRAConfig(target_modules=r"model\.layers\.1\..*_proj"))
    assert paths and all(p.startswith("model.layers.1.") for p in paths)


def test_all_linear_excludes_lm_head():
    paths = select_targets(tiny_llama(), LoRAConfig(target_modules="all-linear"))
    assert "lm_head" not in paths and len(paths) == 2 * 7


def test_all_linear_excludes_classifier_head():
    paths = select_targets(tiny_bert_cls(), LoRAConfig(target_modules="all-linear", task_type="SEQ_CLS"))
    assert "classifier" not in paths and paths


def test_layers_to_transform_picks_layers():
    paths = select_targets(tiny_gpt2(), LoRAConfig(target_modules=["c_attn"], layers_to_transform=[0]))
    assert paths == ["transformer.h.0.attn.c_attn"]


def test_unknown_target_module_is_refused():
    with pytest.raises(TargetNotFoundError, match="matches no"):
        select_targets(tiny_llama(), LoRAConfig(target_modules=["qkv_proj_typo"]))


def test_non_linear_target_is_refused():
    with pytest.raises(TargetNotFoundError, match="Embedding"):
        select_targets(tiny_llama(), LoRAConfig(target_modules=["embed_tokens"]))


@pytest.mark.parametrize("kw", [{"r": 0}, {"r": -4}, {"alpha": 0}, {"dropout": 1.0}, {"init": "zeros"},
                                {"target_modules": []}, {"rank_pattern": {"q_proj": 0}}])
def test_invalid_config_is_refused(kw):
    with pytest.raises(ConfigError):
        LoRAConfig(**kw)
