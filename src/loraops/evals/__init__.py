"""Evaluation: domain metrics on the user's val data, general ability and forgetting vs the base,
and the promotion gate that uses them.

    from loraops.evals import EvalConfig, evaluate
    report = evaluate("gemma-3-270m", "out/adapter", EvalConfig(data="data/"))
    report.domain_gain, report.forgetting.score
"""

from loraops.evals.forgetting import Forgetting, forgetting_score
from loraops.evals.gate import GateConfig, PromotionGate
from loraops.evals.metrics import (DomainScores, exact_match, field_accuracy, hallucinated_fields, score_domain,
                                   token_f1)
from loraops.evals.run import EvalConfig, EvalReport, evaluate, evaluate_ref, store_report

__all__ = ["EvalConfig", "EvalReport", "evaluate", "evaluate_ref", "store_report", "GateConfig", "PromotionGate",
           "DomainScores", "Forgetting", "forgetting_score", "score_domain", "exact_match", "token_f1",
           "field_accuracy", "hallucinated_fields"]
