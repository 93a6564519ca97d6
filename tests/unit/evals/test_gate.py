"""The gate's decisions on stored evaluations (no model runs): a fake registry holds the reports."""

from dataclasses import dataclass

import pytest

from loraops.errors import ConfigError, NotFoundError
from loraops.evals import EvalReport, GateConfig, PromotionGate, forgetting_score
from loraops.evals.general import GeneralScores
from loraops.evals.metrics import DomainScores

COMPARABLE = {"base_fingerprint": "sha256:b", "general_suite": "sha256:g", "data_digest": "sha256:d",
              "examples": 10, "max_new_tokens": 16}


def report(base_acc: float, acc: float, ppl_adapted: float = 10.0, comparable=COMPARABLE) -> dict:
    general = GeneralScores(100, 10.0, ppl_adapted, 0.01, 30, 20, 1.0, 1.0, "sha256:g")
    scores = [DomainScores(10, 0.0, 0.0, 10, a, {}, 0, 0.0, "field_accuracy") for a in (base_acc, acc)]
    return EvalReport("x", {"name": "b", "fingerprint": "sha256:b"}, dict(comparable), general,
                      forgetting_score(10.0, ppl_adapted, 0.01, 1.0, 1.0), *scores).to_dict()


@dataclass
class Version:
    name: str
    version: int
    eval_results: dict | None

    @property
    def ref(self):
        return f"{self.name}@{self.version}"


class FakeRegistry:
    def __init__(self, reports: dict[int, dict | None], production: int | None = None):
        self.reports, self.production = reports, production

    def resolve(self, ref: str) -> Version:
        name, _, which = ref.partition("@")
        if which == "production":
            if self.production is None:
                raise NotFoundError(f"{name} has no production version")
            which = self.production
        return Version(name, int(which), self.reports[int(which)])


def test_first_promotion_must_beat_the_base_and_reports_the_numbers():
    ok, reason = PromotionGate()(FakeRegistry({1: report(0.2, 0.8)}), "acme", 1)
    assert ok
    assert "field_accuracy 0.800 vs base 0.200 (+0.600" in reason
    assert "forgetting 0.000" in reason


def test_too_much_forgetting_is_refused_whatever_the_gain():
    ok, reason = PromotionGate()(FakeRegistry({1: report(0.0, 1.0, ppl_adapted=12.0)}), "acme", 1)
    assert not ok
    assert "forgetting 0.200" in reason and "> max 0.100" in reason


def test_a_looser_forgetting_bound_lets_it_through():
    ok, _ = PromotionGate(GateConfig(max_forgetting=0.25))(FakeRegistry({1: report(0.0, 1.0, 12.0)}), "acme", 1)
    assert ok


def test_no_gain_over_the_base_is_refused():
    ok, reason = PromotionGate()(FakeRegistry({1: report(0.5, 0.5)}), "acme", 1)
    assert not ok and "+0.000, margin 0.000" in reason


def test_the_margin_is_required_on_top_of_the_reference():
    reg = FakeRegistry({1: report(0.5, 0.55)})
    assert PromotionGate(GateConfig(margin=0.0))(reg, "acme", 1)[0]
    assert not PromotionGate(GateConfig(margin=0.1))(reg, "acme", 1)[0]


def test_a_candidate_must_beat_the_current_production_version_not_just_the_base():
    reg = FakeRegistry({1: report(0.1, 0.9), 2: report(0.1, 0.7)}, production=1)
    ok, reason = PromotionGate()(reg, "acme", 2)
    assert not ok and "vs production acme@1 0.900" in reason
    reg = FakeRegistry({1: report(0.1, 0.6), 2: report(0.1, 0.7)}, production=1)
    assert PromotionGate()(reg, "acme", 2)[0]


def test_production_evaluated_on_other_data_cannot_be_compared_without_data():
    other = dict(COMPARABLE, data_digest="sha256:other")
    reg = FakeRegistry({1: report(0.1, 0.5, comparable=other), 2: report(0.1, 0.7)}, production=1)
    ok, reason = PromotionGate()(reg, "acme", 2)
    assert not ok and "no evaluation comparable" in reason


def test_a_version_without_domain_evaluation_is_refused():
    results = report(0.1, 0.5)
    results["domain_base"] = results["domain_adapted"] = None
    ok, reason = PromotionGate()(FakeRegistry({1: results}), "acme", 1)
    assert not ok and "no domain evaluation" in reason


def test_without_a_stored_eval_or_data_the_gate_says_what_to_pass():
    with pytest.raises(ConfigError, match="--data"):
        PromotionGate()(FakeRegistry({1: None}), "acme", 1)


def test_negative_forgetting_bound_is_a_config_error():
    with pytest.raises(ConfigError):
        GateConfig(max_forgetting=-0.1)
