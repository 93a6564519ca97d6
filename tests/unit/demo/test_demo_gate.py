"""The demo's register-gate-promote step with the real registry and promotion gate: an adapter
that beats the base without forgetting passes; one that forgets is refused, and the demo then
promotes it with an audited override, never silently."""

import sys
from pathlib import Path

from eval_reports import stored_eval
from tiny import tiny_llama

from loraops.demo.run import TENANTS, register_and_promote
from loraops.lora import save_adapter
from loraops.registry import Registry

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from lora_factory import random_adapter  # noqa: E402

FP = "sha256:" + "cd" * 32


def test_the_gate_passes_a_good_adapter_and_an_overridden_one_is_audited(tmp_path, capsys):
    passing, forgetting = TENANTS
    reports = {passing.adapter: stored_eval(FP, 0.0, 0.8, ppl_adapted=10.1),
               forgetting.adapter: stored_eval(FP, 0.0, 0.8, ppl_adapted=20.0)}
    model = tiny_llama(0)
    adapters = {t.adapter: save_adapter(random_adapter(model, 4, ["q_proj"], seed=i, meta={"base_fingerprint": FP}),
                                        tmp_path / t.adapter) for i, t in enumerate(TENANTS)}
    register_and_promote(adapters, reports, "tiny", FP, use_gate=True)
    out = capsys.readouterr().out
    assert f"{passing.adapter}@1" in out and "the gate passed it" in out
    assert f"gate refused {forgetting.adapter}@1" in out and "promoted with --force (audited)" in out
    with Registry() as registry:
        assert set(registry.production_versions()) == {passing.adapter, forgetting.adapter}
        promotions = {e.target: e for e in registry.audit() if e.action in ("promote", "force-promote")}
    assert promotions[f"{passing.adapter}@1"].action == "promote"
    assert promotions[f"{passing.adapter}@1"].details["gate"]["ok"] is True
    forced = promotions[f"{forgetting.adapter}@1"]
    assert forced.action == "force-promote" and forced.details["gate"]["ok"] is False
    assert forced.reason == "demo: single-task adapter, forgetting accepted" and "forgetting" in \
        forced.details["gate"]["reason"]


def test_without_the_gate_nothing_is_checked_or_forced(tmp_path, capsys):
    reports = {t.adapter: stored_eval(FP, 0.0, 0.0, ppl_adapted=50.0) for t in TENANTS}
    model = tiny_llama(0)
    adapters = {t.adapter: save_adapter(random_adapter(model, 4, ["q_proj"], seed=i, meta={"base_fingerprint": FP}),
                                        tmp_path / t.adapter) for i, t in enumerate(TENANTS)}
    register_and_promote(adapters, reports, "tiny", FP, use_gate=False)
    with Registry() as registry:
        actions = {e.action for e in registry.audit()}
    assert "force-promote" not in actions and "promote" in actions
