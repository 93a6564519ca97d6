"""The engine's outputs equal plain transformers on the merged model, request by request."""

import threading

import pytest
import torch
from lora_factory import merged_model, save_random_adapters
from tiny import BUILDERS, tiny_tokenizer

from loraops.lora import read_adapter
from loraops.models import BaseInfo, LoadedBase
from loraops.serve.engine import DoneEvent, Engine, EngineConfig, ErrorEvent, TokenEvent
from loraops.serve.lora_kernels import lora_reference
from loraops.serve.sampling import SamplingParams


def make_engine(arch, tmp_path, n_adapters=8, **cfg):
    model = BUILDERS[arch](0)
    paths = save_random_adapters(model, tmp_path, n_adapters)
    base = LoadedBase(model, tiny_tokenizer(), BaseInfo("tiny", tmp_path, "0" * 64))
    engine = Engine(base, EngineConfig(**{"max_slots": 8, "max_rank": 16, "max_kv_tokens": 4096, **cfg}))
    for name, path in paths.items():
        engine.add_adapter(name, path)
    return engine, paths


class Collector:
    def __init__(self):
        self.tokens, self.text, self.done, self.error = [], "", None, None
        self.finished = threading.Event()

    def __call__(self, ev):
        if isinstance(ev, TokenEvent):
            self.tokens.append(ev.token_id)
            self.text += ev.text
        elif isinstance(ev, DoneEvent):
            self.done = ev
            self.finished.set()
        elif isinstance(ev, ErrorEvent):
            self.error = ev.error
            self.finished.set()


def step_logits(engine) -> torch.Tensor:
    """Run one engine step and return the logits its packed forward produced: [sequences, V].
    For an engine made with screen_head=False (else greedy rows get tokens, not logits)."""
    assert engine.runner.head.screen is None
    captured = []
    orig = engine.model.forward

    def spy(*a, **kw):
        out = orig(*a, **kw)
        captured.append(out.logits[0].clone())
        return out
    engine.model.forward = spy
    try:
        engine.step()
    finally:
        engine.model.forward = orig
    return captured[0]


def prompts(n, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("arch,speculate,screen", [("llama", 4, True), ("gemma3", 4, True), ("gemma3", 0, False)])
def test_mixed_batch_greedy_equals_merged_generate(arch, speculate, screen, tmp_path):
    """With n-gram speculation and the int8-screened greedy head (the defaults) too: verified drafts
    and screened tokens give exactly plain decoding's tokens."""
    engine, paths = make_engine(arch, tmp_path, max_batch=24, speculate=speculate, speculate_step_tokens=200,
                                screen_head=screen)
    assert (engine.runner.head.screen is not None) == screen
    models = [f"ad{i % 8}" if i % 3 else "tiny" for i in range(24)]   # 8 adapters + base-only
    ps = prompts(24)
    max_new = [24 if i % 2 else 9 for i in range(24)]                 # crosses Gemma's 16-token window
    engine.start()
    try:
        cols = [Collector() for _ in ps]
        threads = [threading.Thread(target=engine.submit, args=("t", m, p, SamplingParams(n, temperature=0.0), c))
                   for m, p, n, c in zip(models, ps, max_new, cols)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in cols:
            assert c.finished.wait(60)
    finally:
        engine.stop()
    refs = {}
    for m, p, n, c in zip(models, ps, max_new, cols):
        assert c.error is None
        if m not in refs:
            refs[m] = merged_model(BUILDERS[arch], 0, read_adapter(paths[m]) if m in paths else None)
        want = refs[m].generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                max_new_tokens=n, do_sample=False)[0, len(p):].tolist()
        assert c.tokens == want, m
    drafted, accepted = engine.spec_stats
    assert (drafted > 0 and 0 < accepted <= drafted) if speculate else drafted == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_one_mixed_forward_matches_per_row_reference(arch, tmp_path):
    """Logits of one packed multi-adapter forward = each sequence alone through its merged model."""
    engine, paths = make_engine(arch, tmp_path, screen_head=False)
    ps, models = prompts(6, seed=3), ["ad0", "tiny", "ad3", "ad5", "ad0", "ad7"]
    for m, p in zip(models, ps):
        engine.submit("t", m, p, SamplingParams(1, temperature=0.0), Collector())
    logits = step_logits(engine)                                      # [6, V]: last token of each prompt
    assert logits.shape[0] == 6
    for row, m, p in zip(logits, models, ps):
        ref = merged_model(BUILDERS[arch], 0, read_adapter(paths[m]) if m in paths else None)
        want = ref(torch.tensor([p])).logits[0, -1]
        torch.testing.assert_close(row, want, atol=1e-4, rtol=1e-4)


def test_lora_layers_use_the_kernel_reference_semantics(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=3)
    engine.step()                                                     # loads the registered adapters
    layer = engine.runner.lora_layers[0]
    s = layer.slots
    x = torch.randn(5, s.A.shape[2])
    idx = torch.tensor([0, 1, 2, 3, 1])
    from loraops.serve.context import ForwardContext
    layer.serve_ctx = ForwardContext.build(idx, [], None)
    got = layer(x) - layer.base(x)
    layer.serve_ctx = None
    torch.testing.assert_close(got, lora_reference(x, s.A, s.B, s.scale, idx), atol=1e-5, rtol=1e-5)


def test_kv_budget_queues_requests_beyond_capacity(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=2, max_kv_tokens=64, block_size=16)
    cols = [Collector() for _ in range(4)]
    for i, c in enumerate(cols):
        engine.submit("t", f"ad{i % 2}", [5, 6, 7, 8, 9], SamplingParams(20, temperature=0.0), c)  # 25 tokens: 2 blocks
    peak = 0
    for _ in range(500):
        engine.step()
        peak = max(peak, len(engine.running))
        assert engine.cache.used_blocks <= engine.cache.num_blocks
        if all(c.finished.is_set() for c in cols):
            break
    assert peak == 2 and all(c.done.completion_tokens == 20 for c in cols)
    assert engine.cache.used_blocks == 0


def test_ignore_eos_generates_max_tokens_past_the_end_of_sequence(tmp_path):
    """The model's 3rd greedy token made an end-of-sequence id: a plain request stops there
    ("stop", 3 tokens); one with ignore_eos goes on to max_tokens ("length"), the same tokens."""
    engine, _ = make_engine("llama", tmp_path, n_adapters=1)
    first = Collector()
    engine.submit("t", "ad0", [5, 6, 7], SamplingParams(8, temperature=0.0), first)
    engine.run_until_idle()
    engine.eos_ids.add(first.tokens[2])
    plain, ignoring = Collector(), Collector()
    engine.submit("t", "ad0", [5, 6, 7], SamplingParams(8, temperature=0.0), plain)
    engine.submit("t", "ad0", [5, 6, 7], SamplingParams(8, temperature=0.0, ignore_eos=True), ignoring)
    engine.run_until_idle()
    assert first.tokens[2] not in first.tokens[:2]
    assert (plain.done.finish_reason, plain.tokens) == ("stop", first.tokens[:3])
    assert (ignoring.done.finish_reason, ignoring.tokens) == ("length", first.tokens)


def test_cancelled_request_leaves_the_batch_and_frees_its_cache(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=1)
    c = Collector()
    seq = engine.submit("t", "ad0", [5, 6, 7], SamplingParams(50, temperature=0.0), c)
    engine.step()
    engine.step()
    engine.cancel(seq)
    engine.step()
    assert not engine.running and engine.cache.used_blocks == 0 and not engine.pool.pinned(seq.slot)
    assert len(c.tokens) == 2 and c.done is None


def test_replacing_an_adapter_keeps_running_requests_on_the_old_weights(tmp_path):
    engine, paths = make_engine("llama", tmp_path, n_adapters=2)
    ps = [5, 6, 7, 8]
    solo = Collector()
    engine.submit("t", "ad0", ps, SamplingParams(12, temperature=0.0), solo)
    engine.run_until_idle()
    old, new = Collector(), Collector()
    engine.submit("t", "ad0", ps, SamplingParams(12, temperature=0.0), old)
    engine.step()                                                     # admitted on the old version
    engine.add_adapter("ad0", paths["ad1"])                           # hot swap to other weights
    engine.submit("t", "ad0", ps, SamplingParams(12, temperature=0.0), new)
    engine.run_until_idle()
    ref = Collector()
    engine.submit("t", "ad1", ps, SamplingParams(12, temperature=0.0), ref)
    engine.run_until_idle()
    assert old.tokens == solo.tokens and new.tokens == ref.tokens != solo.tokens


def test_more_adapters_than_slots_are_loaded_on_demand_and_evicted(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=6, max_slots=2)
    cols = {f"ad{i}": Collector() for i in range(6)}
    for name, c in cols.items():
        engine.submit("t", name, [5, 6, 7], SamplingParams(4, temperature=0.0), c)
    engine.run_until_idle()
    assert all(c.done is not None for c in cols.values())
    assert engine.pool.stats.evictions >= 4 and len(engine.pool.resident()) == 2
