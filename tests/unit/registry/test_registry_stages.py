"""Stages: promote, gates, rollback through history, refs, and the audit trail."""

import pytest

from loraops.errors import GateFailedError, InvalidNameError, NotFoundError, RegistryError


@pytest.fixture
def three_versions(registry, base, adapter_dir):
    for _ in range(3):
        registry.push(adapter_dir, "a")
    return registry


def test_promote_then_rollback_walks_back_through_history(three_versions):
    reg = three_versions
    for v in (1, 2, 3):
        reg.promote("a", v, actor="alice")
    assert reg.resolve("a@production").version == 3
    assert reg.rollback("a", actor="bob", reason="bad outputs").version == 2
    assert reg.rollback("a").version == 1
    with pytest.raises(RegistryError, match="first version"):
        reg.rollback("a")
    history = reg.show("a").history
    assert [(e.action, e.version) for e in history] == [("promote", 1), ("promote", 2), ("promote", 3),
                                                         ("rollback", 2), ("rollback", 1)]
    assert history[3].actor == "bob" and history[3].reason == "bad outputs"


def test_rollback_without_a_stage_is_an_error(three_versions):
    with pytest.raises(NotFoundError, match="production"):
        three_versions.rollback("a")


def test_stages_are_independent(three_versions):
    reg = three_versions
    reg.promote("a", 2, stage="staging")
    reg.promote("a", 1)
    assert reg.show("a").stages == {"staging": 2, "production": 1}
    assert reg.production_versions() == {"a": (1, reg.resolve("a@1").digest)}


def test_promoting_the_current_version_again_changes_nothing(three_versions):
    three_versions.promote("a", 1)
    three_versions.promote("a", 1)
    assert len(three_versions.show("a").history) == 1


def test_promote_unknown_version_is_not_found(three_versions):
    with pytest.raises(NotFoundError):
        three_versions.promote("a", 9)
    with pytest.raises(NotFoundError):
        three_versions.promote("nope", 1)


def test_failing_gate_refuses_and_force_with_reason_overrides(three_versions):
    reg = three_versions
    calls = []

    def gate(registry, name, version):
        calls.append((name, version))
        return False, "f1 0.41 < 0.80"

    with pytest.raises(GateFailedError, match="f1 0.41"):
        reg.promote("a", 2, gate=gate)
    with pytest.raises(RegistryError, match="reason"):
        reg.promote("a", 2, gate=gate, force=True)
    assert reg.promote("a", 2, gate=gate, force=True, reason="hotfix", actor="carol").version == 2
    assert calls == [("a", 2), ("a", 2)]
    entry = reg.audit(limit=1)[0]
    assert (entry.action, entry.actor, entry.reason) == ("force-promote", "carol", "hotfix")
    assert entry.details["gate"] == {"ok": False, "reason": "f1 0.41 < 0.80"}


def test_passing_gate_promotes(three_versions):
    assert three_versions.promote("a", 3, gate=lambda reg, n, v: (True, "ok")).version == 3


def test_resolve_defaults_to_production_then_latest(three_versions):
    reg = three_versions
    assert reg.resolve("a").version == 3
    reg.promote("a", 1)
    assert reg.resolve("a").version == 1
    assert reg.resolve("a@2").version == 2
    with pytest.raises(NotFoundError):
        reg.resolve("a@staging")
    with pytest.raises(InvalidNameError):
        reg.resolve("a@0")


def test_audit_records_every_change(three_versions):
    reg = three_versions
    reg.promote("a", 2, actor="alice", reason="better f1")
    reg.record_eval("a", 2, {"f1": 0.9}, actor="eval-bot")
    actions = [(e.action, e.target) for e in reversed(reg.audit())]
    assert actions == [("register-base", reg.resolve("a").base_fingerprint), ("push", "a@1"), ("push", "a@2"),
                       ("push", "a@3"), ("promote", "a@2"), ("record-eval", "a@2")]
    promote = reg.audit()[1]
    assert (promote.actor, promote.reason, promote.details["stage"]) == ("alice", "better f1", "production")
