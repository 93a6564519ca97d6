"""ServeDecoder (serve/decoder.py) against transformers' own decoder forward, inside the engine."""

import pytest
import torch
from test_serve_engine import Collector, make_engine, prompts, step_logits
from tiny import BUILDERS, tiny_gpt2

from loraops.serve.decoder import ServeDecoder, install_decoder
from loraops.serve.sampling import SamplingParams


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_decoder_steps_equal_the_transformers_forward(arch, tmp_path):
    """Two engines on the same model and adapters, one with the ServeDecoder: a prefill step and
    decode steps (with speculative drafts: spans of several tokens) over mixed adapters and the
    bare base give the same logits, and leave the same keys and values in the cache. Gemma 3's
    16-token sliding window is crossed."""
    engines = []
    for decoder in (False, True):
        engine, _ = make_engine(arch, tmp_path / str(decoder), screen_head=False, speculate=3, decoder=decoder)
        assert isinstance(engine.model.model, ServeDecoder) == decoder
        for m, p in zip(["ad0", "tiny", "ad3", "ad5", "ad0", "ad7"], prompts(6, seed=3)):
            engine.submit("t", m, p, SamplingParams(30, temperature=0.0), Collector())
        engines.append(engine)
    for step in range(12):
        ref, got = (step_logits(e) for e in engines)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for layer in range(len(engines[0].cache.k)):
        torch.testing.assert_close(engines[1].cache.k[layer], engines[0].cache.k[layer], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(engines[1].cache.v[layer], engines[0].cache.v[layer], atol=1e-4, rtol=1e-4)
    assert engines[1].spec_stats[0] > 0                              # drafts were in those steps


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_outside_the_engine_it_is_the_original_module(arch):
    model = BUILDERS[arch](0)
    ids = torch.tensor([[1, 7, 42, 9, 300, 12]])
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        install_decoder(model)
        after = model(input_ids=ids).logits
    assert torch.equal(before, after) and model.get_input_embeddings() is embedding


def test_other_architectures_keep_their_forward():
    model = tiny_gpt2()
    assert install_decoder(model) is None and not isinstance(getattr(model, "transformer"), ServeDecoder)
