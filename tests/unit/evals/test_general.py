import torch
import torch.nn.functional as F

from loraops.evals.general import (answer_correct, corpus_passages, general_questions, kl_divergence,
                                   token_log_probs)


def test_corpus_is_a_fixed_sample_of_prose_from_the_python_docs():
    passages = corpus_passages(8)
    assert passages == corpus_passages(8)
    assert len(passages) == 8 and len(set(passages)) == 8
    assert all(len(p) >= 300 and "\n" not in p and "::=" not in p for p in passages)
    assert corpus_passages(4, seed=1) != corpus_passages(4, seed=0)


def test_questions_are_deterministic_and_their_answers_are_right():
    qs = general_questions(6)
    assert qs == general_questions(6)
    assert [q.kind for q in qs].count("arithmetic") == 6
    for q in qs:
        if q.kind == "arithmetic":
            expr = q.prompt.rsplit("What is ", 1)[1].split("?")[0]
            assert str(eval(expr)) == q.answer  # noqa: S307 (our own generated "a + b" text)
        if q.kind == "copy":
            assert q.prompt.rsplit("Repeat exactly: ", 1)[1].startswith(q.answer)
        assert q.prompt.endswith("Answer:")


def test_answer_is_judged_on_the_first_line_word_for_word():
    assert answer_correct(" 42\nQuestion: what", "42")
    assert answer_correct(" 42. Easy.", "42")
    assert not answer_correct(" 421", "42")
    assert not answer_correct("\n", "42")
    assert answer_correct(" apple river stone", "apple river stone")
    assert not answer_correct(" apple river", "apple river stone")


def test_kl_matches_the_definition_and_is_zero_for_identical_distributions():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    expected = (F.softmax(p, -1) * (F.log_softmax(p, -1) - F.log_softmax(q, -1))).sum(-1)
    torch.testing.assert_close(kl_divergence(p, q, chunk=2), expected)
    torch.testing.assert_close(kl_divergence(p, p), torch.zeros(5))


def test_token_log_probs_in_chunks_equal_a_full_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(7, 13, generator=g), torch.randint(0, 13, (7,), generator=g)
    full = F.log_softmax(logits, -1)[torch.arange(7), targets]
    torch.testing.assert_close(token_log_probs(logits.half(), targets, chunk=3), F.log_softmax(
        logits.half().float(), -1)[torch.arange(7), targets])
    torch.testing.assert_close(token_log_probs(logits, targets, chunk=3), full)
