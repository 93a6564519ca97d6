"""Hostile inputs to the `loraops` CLI, run as a user would (subprocesses): each is one `error:` line
and a non-zero exit, never a traceback, and leaves nothing half-written."""

import json

import pytest
from cli import assert_one_line_error, run_cli
from hostile import hostile_adapters
from tiny import save_tiny, tiny_llama

from loraops.models import fingerprint_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    base = save_tiny(d / "tiny", "llama")
    meta = {"base_fingerprint": fingerprint_dir(base), "base_name": "tiny"}
    return {"base": base, "bad": hostile_adapters(d, tiny_llama(0), meta), "good": d / "good", "d": d}


PUSHED = ["meta-list", "meta-parents-string", "meta-parent-version-x", "rank-0", "nan-weights"]


@pytest.mark.parametrize("case", PUSHED)
def test_registry_push_of_a_hostile_adapter_is_one_line(world, case):
    path, fragment = world["bad"][case]
    r = run_cli("registry", "push", path, "--name", f"hostile-{case}", "--register-base",
                env={"LORAOPS_HOME": str(world["d"] / "home")})
    assert_one_line_error(r, fragment)


def test_no_hostile_push_was_stored(world):
    from loraops.registry import Registry

    with Registry(home=world["d"] / "home") as reg:
        assert reg.list_adapters() == []


def test_merge_of_a_rank_zero_adapter_is_one_line(world):
    out = world["d"] / "merged"
    r = run_cli("merge", "--base", world["base"], "--adapter", world["bad"]["rank-0"][0], "--out", out)
    assert_one_line_error(r, "empty")
    assert not out.exists()


@pytest.mark.parametrize("weight,fragment", [("nan", "finite"), ("1e309", "finite")])
def test_compose_with_a_non_finite_or_absurd_weight_is_one_line(world, weight, fragment):
    out = world["d"] / f"composed-{weight}"
    r = run_cli("compose", "--adapter", f"{world['good']}:{weight}", "--adapter", f"{world['good']}:1",
                "--method", "cat", "--out", out)
    assert_one_line_error(r, fragment)
    assert not out.exists()


def test_compose_whose_output_overflows_is_one_line(world):
    out = world["d"] / "composed-overflow"
    big = world["d"] / "big"
    from loraops.lora import read_adapter, save_adapter
    adapter = read_adapter(world["good"])
    for m in adapter.modules.values():
        m.B.fill_(1e37)
    save_adapter(adapter, big)
    r = run_cli("compose", "--adapter", f"{big}:100", "--adapter", f"{world['good']}:1", "--method", "linear",
                "--out", out)
    assert_one_line_error(r, "non-finite")
    assert not out.exists()


LINES = [json.dumps({"prompt": f"question {i}?", "completion": f"answer number {i}, with enough words."})
         for i in range(6)]
SURROGATE = '{"prompt": "broken \\ud800 text", "completion": "an answer that is long enough"}'


def test_curate_drops_and_counts_a_lone_surrogate_line(world, tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_text("\n".join([*LINES[:3], SURROGATE, *LINES[3:]]) + "\n")
    r = run_cli("data", "curate", src, "--out", tmp_path / "out", "--no-near-dedup")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kept"] == 6 and report["dropped"] == {"malformed": 1}, report["dropped"]
    assert report["examples"]["malformed"][0]["line"] == 4 and "surrogate" in report["examples"]["malformed"][0]["reason"]


def test_curate_strict_failure_leaves_no_out_directory(world, tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_text("\n".join([*LINES, SURROGATE]) + "\n")
    out = tmp_path / "new" / "out"
    r = run_cli("data", "curate", src, "--out", out, "--strict")
    assert_one_line_error(r, "line 7", "surrogate")
    assert not (tmp_path / "new").exists()
