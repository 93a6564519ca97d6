"""N-gram drafting against its plain definition, and speculative steps in the engine."""

import random

import pytest
import torch
from lora_factory import merged_model
from test_serve_engine import Collector, make_engine, step_logits
from tiny import BUILDERS

from loraops.lora import read_adapter
from loraops.serve.sampling import SamplingParams
from loraops.serve.speculate import DraftLength, NgramDrafter, propose_reference, share_budget


@pytest.mark.parametrize("vocab,max_ngram,min_ngram", [(3, 3, 2), (5, 3, 1), (20, 4, 2), (2, 1, 1)])
def test_drafter_equals_the_backward_scan_at_every_length(vocab, max_ngram, min_ngram):
    rng = random.Random(vocab * 10 + max_ngram)
    tokens = [rng.randrange(vocab) for _ in range(120)] + [7, 8, 9, 7, 8, 9, 7, 8]
    drafter = NgramDrafter(tokens[:5], max_ngram, min_ngram)
    for end in range(5, len(tokens) + 1):
        for k in (1, 3, 6):
            assert drafter.propose(k) == propose_reference(tokens[:end], k, max_ngram, min_ngram), (end, k)
        if end < len(tokens):
            drafter.extend([tokens[end]])


def test_drafter_copies_what_followed_the_latest_longest_match():
    d = NgramDrafter([1, 2, 3, 4, 5, 9, 2, 3, 6, 7, 2, 3])
    assert d.propose(3) == [6, 7, 2]                   # latest (2, 3) wins over the earlier one
    d.extend([4])
    assert d.propose(2) == [5, 9]                      # (2, 3, 4) occurred once, at the start
    assert NgramDrafter([1, 2, 3]).propose(4) == [] and d.propose(0) == []


def test_draft_length_backs_off_after_rejections_and_recovers():
    n = DraftLength(4)
    assert n.next() == 4
    n.update(4, 1)
    assert n.next() == 2
    n.update(2, 0)                                     # nothing accepted: pause 1 step, then 2, 4, ...
    assert [n.next() for _ in range(2)] == [0, 1]
    n.update(1, 0)
    assert [n.next() for _ in range(3)] == [0, 0, 1]
    n.update(0, 0)                                     # nothing drafted: no evidence
    assert n.next() == 1
    n.update(1, 1)                                     # accepted: full length, pauses reset
    assert n.next() == 4
    n.update(4, 0)
    assert [n.next() for _ in range(2)] == [0, 1]
    for _ in range(10):
        n.update(1, 0)
        while n.next() == 0:
            pass
    assert n.pause == 0 and n._next_pause == DraftLength.MAX_PAUSE


def test_the_budget_goes_to_first_guesses_before_later_ones():
    assert share_budget([4, 4, 4, 4], 6) == [2, 2, 1, 1]
    assert share_budget([7, 1, 0, 3], 20) == [7, 1, 0, 3]         # room for every guess
    assert share_budget([7, 1, 0, 3], 6) == [3, 1, 0, 2]
    assert share_budget([5, 5], 0) == [0, 0] and share_budget([], 5) == []


def test_a_speculative_step_keeps_logits_at_every_draft_position(tmp_path):
    """A request whose prompt repeats gets a draft; the step's rows for the last token and each
    draft token equal the merged model's logits at those positions (plain full forward)."""
    engine, paths = make_engine("llama", tmp_path, speculate=4, screen_head=False)
    prompt = [11, 12, 13, 14, 15] * 4
    col = Collector()
    engine.submit("t", "ad2", prompt, SamplingParams(12, temperature=0.0), col)
    ref = merged_model(BUILDERS["llama"], 0, read_adapter(paths["ad2"]))
    checked = 0
    fed = []
    orig = engine.model.forward
    engine.model.forward = lambda *a, **kw: fed.append(kw["input_ids"][0].tolist()) or orig(*a, **kw)
    while col.done is None:
        context = prompt + (engine.running[0].output if engine.running else [])
        logits = step_logits(engine)
        draft = fed[-1][1:] if len(fed) > 1 else []              # this step fed [last token, draft...]
        if draft:
            want = ref(torch.tensor([context + draft])).logits[0, -len(draft) - 1:]
            torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked and engine.spec_stats[0] > 0
    want = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    assert col.tokens == want and len(col.tokens) == 12


def test_sampled_requests_and_speculate_zero_never_draft(tmp_path):
    engine, _ = make_engine("llama", tmp_path, speculate=4)
    cols = [Collector() for _ in range(3)]
    for i, c in enumerate(cols):
        engine.submit("t", f"ad{i}", [5, 6, 7] * 6, SamplingParams(10, temperature=0.8, seed=i), c)
    engine.run_until_idle()
    assert engine.spec_stats == [0, 0] and all(len(c.tokens) == 10 for c in cols)
    off, _ = make_engine("llama", tmp_path / "off", speculate=0)
    col = Collector()
    off.submit("t", "ad0", [5, 6, 7] * 6, SamplingParams(10, temperature=0.0), col)
    off.run_until_idle()
    assert off.spec_stats == [0, 0] and len(col.tokens) == 10


def test_drafts_respect_max_tokens_stop_strings_and_the_step_budget(tmp_path):
    """Accepted drafts never push a request past max_tokens; a stop string inside an accepted draft
    ends the request there; a step never exceeds speculate_step_tokens because of drafts."""
    engine, _ = make_engine("gemma3", tmp_path, speculate=7, speculate_step_tokens=12, max_batch=8)
    sizes = []
    orig = engine.model.forward

    def spy(*a, **kw):
        sizes.append(kw["input_ids"].shape[1])
        return orig(*a, **kw)
    engine.model.forward = spy
    plain, _ = make_engine("gemma3", tmp_path / "plain", speculate=0, max_batch=8)
    runs = {}
    for eng in (engine, plain):
        cols = [Collector() for _ in range(6)]
        for i, c in enumerate(cols):
            eng.submit("t", f"ad{i}", [20 + i, 21, 22, 23] * 5, SamplingParams(5 + 3 * i, temperature=0.0), c)
        eng.run_until_idle()
        runs[eng is engine] = cols
    assert engine.spec_stats[1] > 0
    for spec, ref in zip(runs[True], runs[False]):
        assert spec.tokens == ref.tokens and spec.done.finish_reason == "length"
    prefill = sum(len([20, 21, 22, 23] * 5) for _ in range(6))
    assert all(n <= 12 for n in sizes if n < prefill)   # decode steps with drafts stay within the budget
    # a stop string: the text of the plain run, cut before a substring of its middle
    text = plain.tokenizer.decode(runs[False][5].tokens, skip_special_tokens=True)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip()
    c = Collector()
    engine.submit("t", "ad5", [25, 21, 22, 23] * 5, SamplingParams(20, temperature=0.0, stop=(stop,)), c)
    engine.run_until_idle()
    assert c.done.finish_reason == "stop" and c.text == text[:text.index(stop)]


def test_a_step_without_room_for_drafts_does_not_use_up_a_pause(tmp_path):
    engine, _ = make_engine("llama", tmp_path, speculate=4, speculate_step_tokens=2)
    for i in range(2):
        engine.submit("t", f"ad{i}", [11, 12, 13] * 4, SamplingParams(8, temperature=0.0), Collector())
    engine.step()                                              # the prefills
    for seq in engine.running:
        seq.draft_len.pause = 3
    engine.step()                                              # two decode tokens fill the budget of 2
    assert [s.draft_len.pause for s in engine.running] == [3, 3] and engine.spec_stats == [0, 0]
