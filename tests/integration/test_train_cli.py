"""`loraops train` as a user runs it: one-line errors, SIGKILL + --resume, torchrun, PEFT loading."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "train"))
from train_data import write_records  # noqa: E402
from tiny import save_tiny  # noqa: E402

PY = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
COMMON = ["--rank", "4", "--targets", "q_proj,v_proj", "--batch-size", "4", "--seq-len", "64", "--lr", "1e-2",
          "--warmup-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("base") / "llama", "llama")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("data") / "data.jsonl", n=64)


def env() -> dict:
    # one thread per process: tiny models, a shared 2-core box, and two processes under torchrun
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def train(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "loraops", "train", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=timeout)


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_missing_data_is_a_one_line_error_without_traceback(base, tmp_path):
    proc = train("--base", base, "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: training data '{tmp_path / 'missing.jsonl'}' does not exist"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--data", "{data}", "--rank", "0"], "rank must be a positive integer"),
    (["--data", "{tmp}/empty.jsonl"], "no training records"),
    (["--data", "{data}", "--precision", "fp16"], "precision must be one of"),
    (["--data", "{data}", "--seq-len", "2"], "seq-len must be an integer >= 8"),
])
def test_bad_options_are_one_line_errors_with_a_non_zero_exit(base, data, tmp_path, monkeypatch, capsys, args,
                                                               message):
    from loraops.cli import main

    (tmp_path / "empty.jsonl").write_text("")
    args = [a.format(tmp=tmp_path, data=data) for a in args]
    monkeypatch.setattr(sys, "argv", ["loraops", "train", "--base", str(base), "--out", str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and message in err, err


def step_records(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def kill_after_step(args, out: Path, step: int, resume: bool) -> None:
    """Start the run, SIGKILL it as soon as metrics.jsonl records `step` (mid-run: maybe inside the
    next step or a checkpoint write), and check it died without an adapter."""
    proc = subprocess.Popen([PY, "-m", "loraops", "train", *map(str, args), "--out", str(out),
                             *(["--resume"] if resume else [])], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").is_file() or not any(r["step"] >= step for r in step_records(out)):
        assert proc.poll() is None and time.time() < deadline, f"run ended before step {step}"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "adapter").exists()


def test_sigkilled_runs_resume_to_exactly_the_uninterrupted_run(base, data, tmp_path):
    args = ["--base", base, "--data", data, *COMMON, "--max-steps", 40, "--save-every", 5, "--dropout", 0.1]
    straight = train(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    # Three kills at random points of one run (printed on failure), each followed by a resume.
    points = sorted(random.Random(time.time_ns()).sample(range(1, 38), 3))
    out = tmp_path / "killed"
    for i, step in enumerate(points):
        kill_after_step(args, out, step, resume=i > 0)
    resumed = train(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, (points, resumed.stderr)
    got, want = step_records(out), step_records(tmp_path / "straight")
    assert [r["step"] for r in got] == list(range(40)), points
    assert [(r["loss"], r["grad_norm"]) for r in got] == [(r["loss"], r["grad_norm"]) for r in want], points
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), points


@pytest.fixture(scope="module")
def one_process(base, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    proc = train("--base", base, "--data", data, *COMMON, "--max-steps", 4, "--save-every", 2, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "trained 4 steps" in proc.stdout
    return out


def test_two_processes_match_one_with_the_same_global_batch(base, data, one_process, tmp_path):
    args = ["--base", base, "--data", data, *COMMON, "--max-steps", 4, "--save-every", 2]
    two = subprocess.run([TORCHRUN, "--nproc_per_node=2", "--standalone", "-m", "loraops", "train",
                          *map(str, args), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env(), timeout=180)
    assert two.returncode == 0, two.stderr
    one, both = step_records(one_process), step_records(tmp_path / "two")
    assert {r["world_size"] for r in one} == {1} and {r["world_size"] for r in both} == {2}
    # each process really trained on its share: both ranks' tokens, summing to one process's
    assert all(len(r["rank_tokens"]) == 2 and min(r["rank_tokens"]) > 0 for r in both)
    assert [sum(r["rank_tokens"]) for r in both] == [r["rank_tokens"][0] for r in one]
    assert losses(tmp_path / "two") == pytest.approx(losses(one_process), abs=1e-5)
    a = load_file(one_process / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_trained_adapter_loads_in_peft_and_changes_the_output(base, one_process):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 50, 60, 70, 80]])
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        plain = model(ids).logits
        adapted = PeftModel.from_pretrained(model, one_process / "adapter").eval()(ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-4)
    meta = json.loads((one_process / "adapter" / "loraops.json").read_text())
    assert meta["hyperparameters"]["max_steps"] == 4 and meta["metrics"]["tokens"] > 0
