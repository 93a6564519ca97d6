"""Log-probabilities, penalties and logit_bias per row of a mixed-adapter batch, against plain torch:
every returned log-prob is log_softmax (fp32) of the merged model's own logits at that position."""

import pytest
import torch
from lora_factory import merged_model
from test_serve_engine import make_engine, prompts
from tiny import BUILDERS

from loraops.lora import read_adapter
from loraops.serve.engine import DoneEvent, ErrorEvent, PromptLogprobsEvent, TokenEvent
from loraops.serve.sampling import SamplingParams, process_logits


class Events:
    def __init__(self):
        self.tokens, self.logprobs, self.prompt, self.done, self.error = [], [], None, None, None

    def __call__(self, ev):
        if isinstance(ev, PromptLogprobsEvent):
            assert not self.tokens                  # before the first token
            self.prompt = ev.entries
        elif isinstance(ev, TokenEvent):
            self.tokens.append(ev.token_id)
            self.logprobs.append(ev.logprob)
        elif isinstance(ev, DoneEvent):
            self.done = ev
        elif isinstance(ev, ErrorEvent):
            self.error = ev.error


def reference_logprobs(arch, paths, model, ids):
    """log_softmax of the merged model's logits at every position of `ids`: [len(ids), V], fp32."""
    ref = merged_model(BUILDERS[arch], 0, read_adapter(paths[model]) if model in paths else None)
    with torch.no_grad():
        return torch.log_softmax(ref(torch.tensor([ids])).logits[0].float(), -1)


def assert_entry(entry, ref_row, token, k):
    assert entry.token_id == token
    assert abs(entry.logprob - float(ref_row[token])) <= 1e-4
    top = ref_row.topk(k)
    assert [t for t, _ in entry.top] == top.indices.tolist()                # the true top k, in order
    torch.testing.assert_close(torch.tensor([v for _, v in entry.top]), top.values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch,screen", [("llama", True), ("gemma3", False)])
def test_logprobs_equal_log_softmax_of_the_reference_per_row(arch, screen, tmp_path):
    """Greedy and sampled rows, with and without prompt log-probs, on four adapters and the base, in
    one batch beside plain greedy rows (which keep the screened head's fast path and their tokens)."""
    engine, paths = make_engine(arch, tmp_path, n_adapters=4, screen_head=screen, speculate=4,
                                speculate_step_tokens=200)
    models = ["ad0", "ad1", "tiny", "ad2", "ad3", "ad1"]
    params = [SamplingParams(6, temperature=0.0, logprobs=5, prompt_logprobs=3),
              SamplingParams(6, temperature=0.9, seed=3, logprobs=2),
              SamplingParams(6, temperature=0.0, logprobs=0, prompt_logprobs=0),
              SamplingParams(6, temperature=0.0),                          # plain greedy: the fast path
              SamplingParams(6, temperature=1.0, seed=5, prompt_logprobs=4),
              SamplingParams(6, temperature=0.0)]
    ps = prompts(len(models), seed=11)
    got = [Events() for _ in models]
    for m, p, sp, ev in zip(models, ps, params, got):
        engine.submit("t", m, p, sp, ev)
    engine.run_until_idle()
    for m, p, sp, ev in zip(models, ps, params, got):
        assert ev.error is None and ev.done is not None
        ref = reference_logprobs(arch, paths, m, p + ev.tokens)
        if sp.logprobs is None:
            assert ev.logprobs == [None] * len(ev.tokens)
        else:
            for i, (entry, token) in enumerate(zip(ev.logprobs, ev.tokens)):
                assert_entry(entry, ref[len(p) - 1 + i], token, sp.logprobs)
        if sp.prompt_logprobs is None:
            assert ev.prompt is None
        else:
            assert len(ev.prompt) == len(p) and ev.prompt[0] is None
            for j, entry in enumerate(ev.prompt[1:]):
                assert_entry(entry, ref[j], p[j + 1], sp.prompt_logprobs)
        if sp.greedy:                                  # logprobs or not, greedy is the reference's argmax
            assert ev.tokens == ref[len(p) - 1:-1].argmax(-1).tolist()


def test_max_tokens_zero_scores_the_prompt_only(tmp_path):
    engine, paths = make_engine("llama", tmp_path, n_adapters=1)
    p = prompts(1, seed=2)[0]
    ev = Events()
    engine.submit("t", "ad0", p, SamplingParams(0, temperature=0.0, prompt_logprobs=2), ev)
    engine.run_until_idle()
    assert ev.tokens == [] and ev.done.finish_reason == "length" and ev.done.completion_tokens == 0
    ref = reference_logprobs("llama", paths, "ad0", p)
    for j, entry in enumerate(ev.prompt[1:]):
        assert_entry(entry, ref[j], p[j + 1], 2)
    assert engine.cache.used_blocks == 0


def test_process_logits_matches_its_definition():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])
    p = SamplingParams(logit_bias=((1, 4.0),), repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    out = process_logits(logits, p, prompt=[0], output=[3, 3, 4])
    # bias: [2, 3, .5, 3, -2]; repetition on {0, 3, 4}: [1, 3, .5, 1.5, -4]; 3 twice, 4 once.
    want = torch.tensor([1.0, 3.0, 0.5, 1.5 - 2 * 0.5 - 0.25, -4.0 - 0.5 - 0.25])
    torch.testing.assert_close(out, want)
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0, -2.0]                 # the input is not changed


def test_logit_bias_bans_and_forces_tokens_and_penalties_change_the_output(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=1)
    p = prompts(1, seed=4)[0]

    def run(**kw):
        ev = Events()
        engine.submit("t", "ad0", p, SamplingParams(12, temperature=0.0, **kw), ev)
        engine.run_until_idle()
        assert ev.error is None
        return ev.tokens
    plain = run()
    banned = run(logit_bias=tuple((t, -100.0) for t in set(plain)))
    assert not set(banned) & set(plain)
    forced = 77 if 77 not in plain else 78
    assert run(logit_bias=((forced, 100.0),)) == [forced] * 12
    assert len(set(plain)) < len(plain)                 # the tiny model repeats itself ...
    penalised = run(frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised != plain and len(set(penalised)) > len(set(plain))   # ... and less so when penalised
    assert run(repetition_penalty=3.0) != plain


def test_speculation_is_exact_for_rows_with_penalties_and_logprobs(tmp_path):
    """Drafts stay on for greedy rows that process their logits: the tokens and log-probs are those
    of plain decoding."""
    outs = []
    for speculate in (4, 0):
        engine, _ = make_engine("llama", tmp_path / str(speculate), n_adapters=2, speculate=speculate,
                                speculate_step_tokens=200)
        evs = [Events() for _ in range(3)]
        for i, ev in enumerate(evs):
            engine.submit("t", f"ad{i % 2}", [5, 6, 7, 5, 6, 7, 5, 6], SamplingParams(
                16, temperature=0.0, logprobs=3, frequency_penalty=0.3 * i, repetition_penalty=1.0 + 0.1 * i), ev)
        engine.run_until_idle()
        outs.append([(ev.tokens, [round(e.logprob, 5) for e in ev.logprobs]) for ev in evs])
        if speculate:
            assert engine.spec_stats[0] > 0
    assert outs[0] == outs[1]
