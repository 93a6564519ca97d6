import pytest

from loraops.errors import ConfigError
from loraops.lora.config import ALL_LINEAR
from loraops.train import TrainConfig


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"base": "b", "data": "d", "out": "o", **kw})


@pytest.mark.parametrize("bad", [
    {"rank": 0}, {"rank": -4}, {"lr": 0.0}, {"lr": -1e-3}, {"seq_len": 4}, {"precision": "fp16"},
    {"batch_size": 0}, {"grad_accum": 0}, {"max_steps": 0}, {"dropout": 1.0}, {"targets": " "},
    {"targets": "q_proj(["}, {"val_fraction": 1.0}, {"max_bad_steps": 0},
])
def test_invalid_options_are_refused_with_a_config_error(bad):
    with pytest.raises(ConfigError):
        config(**bad)


def test_targets_accept_all_linear_a_comma_list_or_a_regex():
    assert config().lora_config().target_modules == ALL_LINEAR
    assert config(targets="q_proj, v_proj").lora_config().target_modules == ["q_proj", "v_proj"]
    assert config(targets=r".*\.(q|v)_proj").lora_config().target_modules == r".*\.(q|v)_proj"


def test_lora_options_reach_the_adapter_config():
    lora = config(rank=4, alpha=8, dropout=0.1, use_dora=True, use_rslora=True).lora_config()
    assert (lora.r, lora.alpha, lora.dropout, lora.use_dora, lora.use_rslora) == (4, 8, 0.1, True, True)
