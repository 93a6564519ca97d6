"""Evaluation reports as `loraops eval` stores them, with chosen scores: for tests of the real
promotion gate that need a known outcome without training a model that earns it."""

from loraops.evals import EvalReport, forgetting_score
from loraops.evals.general import GeneralScores
from loraops.evals.metrics import DomainScores


def stored_eval(fingerprint: str, base_acc: float, acc: float, ppl_adapted: float, ppl_base: float = 10.0) -> dict:
    """Field accuracy base_acc -> acc on 16 examples; perplexity ppl_base -> ppl_adapted (forgetting)."""
    comparable = {"base_fingerprint": fingerprint, "general_suite": "sha256:g", "data_digest": "sha256:d",
                  "examples": 16, "max_new_tokens": 32}
    general = GeneralScores(100, ppl_base, ppl_adapted, 0.01, 30, 20, 1.0, 1.0, "sha256:g")
    scores = [DomainScores(16, 0.0, 0.0, 16, a, {}, 0, 0.0, "field_accuracy") for a in (base_acc, acc)]
    return EvalReport("x", {"name": "tiny", "fingerprint": fingerprint}, comparable, general,
                      forgetting_score(ppl_base, ppl_adapted, 0.01, 1.0, 1.0), *scores).to_dict()
