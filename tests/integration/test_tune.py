"""`loraops tune` on a tiny base: a short study trains, scores and prunes real trials, records the
finished ones on registry versions, and resumes after it is killed mid-trial."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from loraops.errors import ConfigError
from loraops.registry import Registry
from loraops.tune import Recipe, SearchSpace, TuneConfig, tune
from loraops.tune.space import parse_range, parse_recipe
from loraops.tune.study import TrialRow
from loraops.tune.table import trials_table
from tiny import save_tiny

PY = sys.executable
# On this task (answer " b") the tiny model answers right after 2 steps at lr 3e-2, and not at all at 1e-5.
GOOD = Recipe(rank=4, targets="all-linear", lr=3e-2, steps=4, replay=0.0)
BAD = Recipe(rank=4, targets="all-linear", lr=1e-5, steps=4, replay=0.0)
SPACE = SearchSpace(ranks=(4,), targets=("qv", "all-linear"), lr=(1e-5, 3e-2), steps=(4, 40), replay=(0.0, 0.5))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("base") / "llama", "llama")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    rows = [{"prompt": f"Route ticket {i}: my card was declined\nAnswer:", "completion": " b"} for i in range(40)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    return d


def config(base, data, out, **kw) -> TuneConfig:
    settings = dict(base=str(base), data=str(data), out=str(out), name="tiny-router", tenant="globex", space=SPACE,
                    trials=2, rung_steps=2, reduction_factor=2, batch_size=2, seq_len=64, eval_examples=4,
                    general_passages=2, questions_per_kind=1, progress=False)
    return TuneConfig(**{**settings, **kw})


def test_a_short_study_prunes_the_bad_recipe_and_registers_the_good_one(base, data, tmp_path, capsys):
    # forgetting cannot decide here (a random tiny model's perplexity moves either way): the domain does
    result = tune(config(base, data, tmp_path / "study", first=(GOOD, BAD), max_forgetting=100.0))

    good, bad = result.rows
    assert (good.state, good.version) == ("complete", 1)
    assert (bad.state, bad.step, bad.version) == ("pruned", 2, None)
    assert bad.scores.domain == 0.0 and good.scores is not None
    assert result.best.number == good.number
    assert not (tmp_path / "study" / "trials" / "0001" / "adapter").exists()  # a pruned trial leaves no adapter
    with Registry() as registry:
        version = registry.resolve("tiny-router@1")
    assert version.tenant == "globex"
    assert version.hyperparameters["lr"] == GOOD.lr and version.hyperparameters["max_steps"] == GOOD.steps
    tuned = version.metrics["tune"]
    assert tuned["recipe"] == GOOD.to_dict() and tuned["score"] == pytest.approx(good.scores.score)
    assert tuned["trial"] == good.number and "forgetting" in tuned and "baseline" in tuned
    assert "pruned@2" in capsys.readouterr().err  # the progress table


def test_a_finished_study_runs_nothing_more_and_other_settings_are_refused(base, data, tmp_path):
    tune(config(base, data, tmp_path / "study", trials=1, first=(GOOD,)))
    again = tune(config(base, data, tmp_path / "study", trials=1, first=(GOOD,)))
    assert len(again.rows) == 1
    with pytest.raises(ConfigError, match="other settings.*eval_examples"):
        tune(config(base, data, tmp_path / "study", trials=2, eval_examples=3))


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_a_study_killed_mid_trial_resumes_that_trial_from_its_checkpoint(base, data, tmp_path):
    def command(out: Path) -> list[str]:
        # lr too small to learn anything in 40 steps: every score ties, so nothing is pruned
        return [PY, "-m", "loraops", "tune", "--base", str(base), "--data", str(data), "--out", str(out),
                "--name", "tiny-router", "--trials", "3", "--ranks", "4", "--targets", "qv,all-linear",
                "--lr", "1e-5:1e-4", "--steps", "30:40", "--replay", "0", "--rung-steps", "2",
                "--reduction-factor", "10", "--batch-size", "2", "--seq-len", "64", "--eval-examples", "2",
                "--max-forgetting", "100", "--no-progress"]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    straight = subprocess.run(command(tmp_path / "straight"), env={**env, "LORAOPS_HOME": str(tmp_path / "h2")},
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "study"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = out / "trials" / "0001" / "checkpoints"
    deadline = time.time() + 180
    while not (checkpoints.is_dir() and any(checkpoints.glob("step-*"))):
        assert proc.poll() is None and time.time() < deadline, "the study ended before trial 1 checkpointed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    done = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="loraops-tune", storage=f"sqlite:///{out / 'study.db'}")
    killed = study.trials[1]
    assert killed.state == optuna.trial.TrialState.FAIL
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["run_dir"] == str(out / "trials" / "0001")
    # resumed from the checkpoint, the trial's loss curve is the uninterrupted run's, step for step
    assert _losses(out / "trials" / "0001") == pytest.approx(_losses(tmp_path / "straight" / "trials" / "0001"), abs=1e-6)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 3 and len({json.dumps(t.params, sort_keys=True) for t in finished}) == 3
    with Registry() as registry:
        versions = registry.show("tiny-router").versions
    assert sorted(v.metrics["tune"]["trial"] for v in versions) == sorted(t.number for t in finished)


def test_recipes_and_ranges_are_parsed_and_checked():
    assert parse_recipe("rank=8,targets=qv,lr=3e-4,steps=32,replay=0.5") == Recipe(8, "qv", 3e-4, 32, 0.5)
    assert parse_range("40", int, "steps") == (40, 40)
    with pytest.raises(ConfigError, match="--try must be"):
        parse_recipe("rank=8,lr=3e-4")
    with pytest.raises(ConfigError, match="outside the search space"):
        config("b", "d", "o", first=(Recipe(64, "qv", 3e-4, 32, 0.5),))
    with pytest.raises(ConfigError, match="targets must be among"):
        SearchSpace(targets=("everything",))
    with pytest.raises(ConfigError, match="lr range"):
        SearchSpace(lr=(3e-3, 1e-4))


def test_the_progress_table_fits_an_80_column_terminal():
    from loraops.tune.score import Baseline, TrialScores

    scores = TrialScores("field_accuracy", 0.953, {}, 0.9, 0.0, 33.1, 0.94, 0.056, 0.953)
    rows = [TrialRow(12, dict(rank=16, targets="all-linear", lr=1.23e-3, steps=96, replay=0.75), "pruned", 32, scores),
            TrialRow(103, dict(rank=4, targets="attention", lr=3e-4, steps=40, replay=0.5), "complete", 40, scores, 12)]
    console = Console(width=80, record=True)
    console.print(trials_table(rows, Baseline("field_accuracy", 0.0, 38.5, (1, 2)), 0.1))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    assert "pruned@32" in text and "103*" in text
