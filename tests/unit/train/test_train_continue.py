"""Checkpoints as adapters, and training that continues from an adapter (what fine-tuning jobs use)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from loraops.errors import BaseMismatchError
from loraops.lora import read_adapter, save_adapter
from loraops.models import load_base
from loraops.train import TrainConfig, checkpoint_adapters, run
from loraops.train.checkpoint import list_checkpoints


def config(base, data, out, **kw) -> TrainConfig:
    # warmup_steps 10 > every run's length: the learning rate at a step does not depend on the total
    opts = dict(base=str(base), data=str(data), out=str(out), rank=4, batch_size=4, seq_len=64, lr=1e-2,
                warmup_steps=10, dropout=0.1, targets="q_proj,v_proj", progress=False)
    return TrainConfig(**{**opts, **kw})


def test_a_checkpoint_becomes_the_adapter_a_run_had_at_that_step(tiny_base, data_file, tmp_path):
    long = config(tiny_base, data_file, tmp_path / "long", max_steps=4, save_every=2)
    run(long)
    short = run(config(tiny_base, data_file, tmp_path / "short", max_steps=2))
    (checkpoint,) = list_checkpoints(tmp_path / "long")
    (adapter,) = checkpoint_adapters(load_base(str(tiny_base)), long, [checkpoint], {"base_name": "x"})
    assert adapter.meta["metrics"]["checkpoint_step"] == 2 and adapter.meta["base_name"] == "x"
    exported = load_file(save_adapter(adapter, tmp_path / "exported") / "adapter_model.safetensors")
    expected = load_file(short.adapter_dir / "adapter_model.safetensors")
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)


def test_training_continues_from_an_adapter_with_its_config_and_weights(tiny_base, data_file, tmp_path):
    parent = run(config(tiny_base, data_file, tmp_path / "parent", max_steps=6, rank=4)).adapter_dir
    # rank and targets given here are not used: the parent's are
    child_cfg = config(tiny_base, data_file, tmp_path / "child", max_steps=1, rank=8, targets="all-linear",
                       lr=1e-12, init_adapter=str(parent))
    child = read_adapter(run(child_cfg).adapter_dir)
    start = read_adapter(parent)
    assert child.config.r == 4 and set(child.modules) == set(start.modules)
    for name, m in child.modules.items():
        torch.testing.assert_close(m.B, start.modules[name].B, atol=1e-8, rtol=0)
    fresh = run(config(tiny_base, data_file, tmp_path / "fresh", max_steps=1))

    def first_loss(out):
        return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    assert first_loss(tmp_path / "child") < first_loss(tmp_path / "fresh")
    assert fresh.steps == 1


def test_continuing_from_an_adapter_of_another_base_is_refused(tiny_base, data_file, tmp_path):
    parent = run(config(tiny_base, data_file, tmp_path / "parent", max_steps=1)).adapter_dir
    meta = json.loads((parent / "loraops.json").read_text())
    (parent / "loraops.json").write_text(json.dumps({**meta, "base_fingerprint": "sha256:" + "f" * 64}))
    with pytest.raises(BaseMismatchError):
        run(config(tiny_base, data_file, tmp_path / "child", max_steps=1, init_adapter=str(parent)))
