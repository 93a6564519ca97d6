import pytest

from loraops.evals import forgetting_score


def test_forgetting_is_the_worst_relative_degradation():
    f = forgetting_score(ppl_base=10.0, ppl_adapted=11.0, kl_mean=0.2, qa_acc_base=1.0, qa_acc_adapted=0.75)
    assert f.ppl_term == pytest.approx(0.10)
    assert f.qa_term == pytest.approx(0.25)
    assert f.score == pytest.approx(0.25)
    assert f.kl_mean == 0.2  # reported beside the score, not part of it


def test_improving_general_text_is_not_negative_forgetting():
    assert forgetting_score(10.0, 9.0, 0.01, 1.0, 1.0).score == 0.0


def test_without_kept_questions_only_perplexity_counts():
    f = forgetting_score(4.0, 5.0, 0.3, None, None)
    assert f.qa_term is None
    assert f.score == pytest.approx(0.25)
