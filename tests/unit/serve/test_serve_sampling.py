"""Sampling: greedy, seeds, top-k/top-p, stop strings in a stream."""

import torch
from tiny import tiny_tokenizer

from loraops.serve.sampling import SamplingParams, TextStream, filter_logits, make_generator, sample


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.0])
    assert sample(logits, SamplingParams(temperature=0.0), None) == 1


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.zeros(300)
    def draw(seed):
        p = SamplingParams(temperature=1.0, seed=seed)
        g = make_generator(p)
        return [sample(logits, p, g) for _ in range(20)]
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_top_k_keeps_only_k_tokens():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0])
    kept = torch.isfinite(filter_logits(logits, 2, 1.0))
    assert kept.tolist() == [False, True, False, True]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(filter_logits(logits, 0, 0.7))
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, 0, 0.01)).sum() == 1


def test_seeded_sampling_never_picks_filtered_tokens():
    p = SamplingParams(temperature=2.0, top_k=3, seed=0)
    g = make_generator(p)
    logits = torch.arange(50, dtype=torch.float)
    assert {sample(logits, p, g) for _ in range(100)} <= {47, 48, 49}


def _stream_text(text, stop):
    tok = tiny_tokenizer()
    s = TextStream(tok, stop)
    out = ""
    for t in tok.encode(text, add_special_tokens=False):
        out += s.push(t)
        if s.stopped:
            break
    return out + s.flush(), s.stopped


def test_stop_string_cuts_the_text_and_is_not_emitted():
    text, stopped = _stream_text("Hello, how can I help you today?", ("help",))
    assert stopped and text == "Hello, how can I "


def test_without_a_stop_match_all_text_comes_out():
    text, stopped = _stream_text("Hello, how can I help you today?", ("zebra",))
    assert not stopped and text == "Hello, how can I help you today?"


def test_a_possible_stop_prefix_is_held_back():
    tok = tiny_tokenizer()
    s = TextStream(tok, ("you!",))
    emitted = "".join(s.push(t) for t in tok.encode("can I help you", add_special_tokens=False))
    assert not emitted.endswith("you") and (emitted + s.flush()) == "can I help you"
