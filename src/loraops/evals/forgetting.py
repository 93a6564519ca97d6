"""The forgetting score: how much general ability an adapter costs, relative to its base.

    ppl_term  = ppl_adapted / ppl_base − 1                 (relative perplexity increase)
    qa_term   = (acc_base − acc_adapted) / acc_base        (relative accuracy drop on the questions
                                                            the base answers right; absent if none)
    forgetting = max(0, ppl_term, qa_term)

The max, not the mean: losing one ability is not excused by keeping another. It is clipped at 0
because an adapter that happens to improve general text is not "negative forgetting" to trade
against domain gain. KL(base ‖ adapted) is reported beside it, not folded in: it has no natural
scale to compare with a relative change, but it is the most sensitive early warning.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Forgetting:
    score: float
    ppl_term: float
    qa_term: float | None
    kl_mean: float


def forgetting_score(ppl_base: float, ppl_adapted: float, kl_mean: float,
                     qa_acc_base: float | None = None, qa_acc_adapted: float | None = None) -> Forgetting:
    ppl_term = ppl_adapted / ppl_base - 1.0
    qa_term = None
    if qa_acc_base and qa_acc_adapted is not None:
        qa_term = (qa_acc_base - qa_acc_adapted) / qa_acc_base
    score = max(0.0, ppl_term, qa_term if qa_term is not None else 0.0)
    return Forgetting(score, ppl_term, qa_term, kl_mean)
