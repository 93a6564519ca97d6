"""`loraops registry …` as a user runs it: a subprocess per command, SQLite in LORAOPS_HOME."""

import json

import pytest

from cli import assert_one_line_error, run_cli
from registry_helpers import FINGERPRINT, make_adapter

from loraops.lora import read_adapter
from loraops.registry import Registry


@pytest.fixture
def env(_isolated_home, monkeypatch):
    monkeypatch.delenv("LORAOPS_DB_URL", raising=False)  # SQLite in the test's LORAOPS_HOME
    return {"LORAOPS_ACTOR": "cli-user"}


def ok(*args, env) -> str:
    result = run_cli("registry", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_push_promote_rollback_fetch_round_trip(adapter_dir, tmp_path, env):
    assert "pushed acme-bot@1" in ok("push", adapter_dir, "--name", "acme-bot", "--tenant", "acme",
                                     "--register-base", env=env)
    with Registry() as reg:  # in-process where the CLI would only repeat itself (each run imports torch)
        reg.push(make_adapter(tmp_path / "v2", seed=2), "acme-bot", created_by="cli-user")
        reg.promote("acme-bot", 1, actor="cli-user")
    # Production is gated; v2 has no evaluation, so only --force --reason gets it there (audited).
    refused = run_cli("registry", "promote", "acme-bot", "2", env=env)
    assert refused.returncode != 0 and "no stored evaluation" in refused.stderr
    ok("promote", "acme-bot", "2", "--force", "--reason", "better f1", env=env)

    listed = json.loads(ok("list", "--tenant", "acme", "--json", env=env))
    assert [(a["name"], a["latest"], a["stages"]) for a in listed] == [("acme-bot", 2, {"production": 2})]
    shown = json.loads(ok("show", "acme-bot", "--json", env=env))
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["versions"][0]["base_fingerprint"] == FINGERPRINT

    assert "version 1" in ok("rollback", "acme-bot", env=env)
    audit = json.loads(ok("audit", "--json", env=env))
    assert [e["action"] for e in audit][:3] == ["rollback", "force-promote", "promote"]
    assert audit[1]["reason"] == "better f1"
    assert {e["actor"] for e in audit} == {"cli-user"}

    ok("fetch", "acme-bot@production", "--out", tmp_path / "fetched", env=env)
    assert read_adapter(tmp_path / "fetched").meta == read_adapter(adapter_dir).meta
    assert "stage history" in ok("show", "acme-bot", env=env)  # the tables


def test_errors_are_one_line_without_traceback(adapter_dir, tmp_path, env):
    assert_one_line_error(run_cli("registry", "push", adapter_dir, "--name", "../evil", env=env),
                          "invalid adapter name")
    assert_one_line_error(run_cli("registry", "rollback", "nope", env=env), "no adapter named 'nope'")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert_one_line_error(run_cli("registry", "fetch", "nope", "--out", tmp_path / "full", env=env),
                          "not an empty")
