import json
import math

import pytest
import torch
from safetensors.torch import load_file

import loraops
from loraops.errors import ConfigError, TrainingDivergedError
from loraops.lora import read_adapter
from loraops.train import TrainConfig, run
from loraops.train import loop
from loraops.train.checkpoint import list_checkpoints


def config(base, data, out, **kw) -> TrainConfig:
    opts = dict(base=str(base), data=str(data), out=str(out), rank=4, max_steps=8, batch_size=4, seq_len=64,
                lr=1e-2, warmup_steps=2, save_every=4, eval_every=3, dropout=0.1, targets="q_proj,v_proj",
                progress=False)
    return TrainConfig(**{**opts, **kw})


def steps(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def val_losses(out) -> list[tuple[int, float]]:
    return [(r["step"], r["val_loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r]


class Crash(Exception):
    pass


def crash_at_training_call(monkeypatch, n: int) -> None:
    """Make the n-th training forward raise, as if the process died there."""
    real, calls = loop.lm_loss, [0]

    def crashing(model, batch, cfg):
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == n:
                raise Crash
        return real(model, batch, cfg)

    monkeypatch.setattr(loop, "lm_loss", crashing)


def test_training_lowers_the_loss_and_writes_a_bound_adapter(tiny_base, data_file, tmp_path):
    result = run(config(tiny_base, data_file, tmp_path / "run", max_steps=12, dropout=0.0))
    log = steps(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(12))
    assert log[-1]["loss"] < log[0]["loss"]
    assert {"lr", "grad_norm", "tokens", "tokens_per_s", "elapsed"} <= set(log[0])
    assert val_losses(tmp_path / "run")[-1] == (11, pytest.approx(result.val_loss))
    adapter = read_adapter(result.adapter_dir)
    meta = adapter.meta
    assert meta["base_fingerprint"] == loraops.models.resolve_base(str(tiny_base)).fingerprint
    assert meta["hyperparameters"]["rank"] == 4 and meta["loraops_version"] == loraops.__version__
    assert len(meta["dataset_digest"]) == 64
    assert meta["metrics"]["val_loss"] == pytest.approx(result.val_loss)
    assert set(adapter.modules) == {f"model.layers.{i}.self_attn.{m}_proj" for i in range(2) for m in "qv"}
    assert any(m.B.abs().sum() > 0 for m in adapter.modules.values())


def test_resumed_run_repeats_the_uninterrupted_loss_curve_exactly(tiny_base, data_file, tmp_path, monkeypatch):
    run(config(tiny_base, data_file, tmp_path / "straight"))
    with monkeypatch.context() as m:
        crash_at_training_call(m, 7)  # step 6: after the step-4 checkpoint, before the end
        with pytest.raises(Crash):
            run(config(tiny_base, data_file, tmp_path / "resumed"))
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step-00000004"]
    run(config(tiny_base, data_file, tmp_path / "resumed", resume=True))

    straight, resumed = steps(tmp_path / "straight"), steps(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(8))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in straight]
    assert val_losses(tmp_path / "resumed") == val_losses(tmp_path / "straight")
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_one_big_batch(tiny_base, data_file, tmp_path):
    kw = dict(dropout=0.0, max_steps=4)
    run(config(tiny_base, data_file, tmp_path / "big", batch_size=4, **kw))
    run(config(tiny_base, data_file, tmp_path / "accum", batch_size=2, grad_accum=2, **kw))
    big, accum = steps(tmp_path / "big"), steps(tmp_path / "accum")
    assert [r["loss"] for r in accum] == pytest.approx([r["loss"] for r in big], abs=1e-6)


def test_a_non_finite_loss_skips_the_update_and_training_goes_on(tiny_base, data_file, tmp_path, monkeypatch):
    real, calls = loop.lm_loss, [0]

    def nan_on_step_2(model, batch, cfg):
        loss = real(model, batch, cfg)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(loop, "lm_loss", nan_on_step_2)
    result = run(config(tiny_base, data_file, tmp_path / "run", max_steps=5))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r.get("skipped")]
    assert [r["step"] for r in skipped] == [2] and skipped[0]["loss"] == "nan"
    assert [r["step"] for r in steps(tmp_path / "run") if not r.get("skipped")] == [0, 1, 3, 4]
    assert result.skipped_steps == 1
    assert all(math.isfinite(m.B.abs().sum()) for m in read_adapter(result.adapter_dir).modules.values())


def test_too_many_bad_steps_in_a_row_stop_the_run_and_keep_the_last_checkpoint(tiny_base, data_file, tmp_path,
                                                                               monkeypatch):
    real, calls = loop.lm_loss, [0]

    def inf_from_step_5(model, batch, cfg):  # one training forward per step in this config
        loss = real(model, batch, cfg)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] > 5:
                return loss * float("inf")
        return loss

    monkeypatch.setattr(loop, "lm_loss", inf_from_step_5)
    with pytest.raises(TrainingDivergedError, match=r"3 non-finite steps in a row \(steps 5\.\.7\).*step-00000004"):
        run(config(tiny_base, data_file, tmp_path / "run", max_steps=10, max_bad_steps=3))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000004"]
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_second_run_into_the_same_dir_needs_resume(tiny_base, data_file, tmp_path):
    run(config(tiny_base, data_file, tmp_path / "run", max_steps=5))
    with pytest.raises(ConfigError, match="--resume"):
        run(config(tiny_base, data_file, tmp_path / "run", max_steps=5))
    with pytest.raises(ConfigError, match="rank"):
        run(config(tiny_base, data_file, tmp_path / "run", max_steps=5, rank=8, resume=True))


def test_bf16_and_gradient_checkpointing_train(tiny_base, data_file, tmp_path):
    result = run(config(tiny_base, data_file, tmp_path / "run", max_steps=3, precision="bf16",
                        grad_checkpointing=True))
    assert result.steps == 3 and math.isfinite(result.train_loss) and math.isfinite(result.val_loss)
