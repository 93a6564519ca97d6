"""Per-request composition ("a:0.7+b:0.3"): the parser, the weighted multi-term kernel, and the
engine's output against the base with the adapters' weighted ΔW merged in."""

import dataclasses

import pytest
import torch
from test_serve_engine import Collector, make_engine, prompts, step_logits
from test_serve_kernels import _weights
from tiny import BUILDERS

from loraops.lora import Adapter, merge_state_dict, read_adapter
from loraops.lora.compose import compose
from loraops.serve.context import ForwardContext
from loraops.serve.errors import BadRequestError, ModelNotFoundError
from loraops.serve.lora_kernels import LoRATerm, lora_reference, lora_terms
from loraops.serve.model_ref import ModelRef
from loraops.serve.sampling import SamplingParams

# ---- the parser -------------------------------------------------------------------------------


@pytest.mark.parametrize("model,parts", [
    ("acme-a", [("acme-a", 1.0)]),
    ("acme-a@3", [("acme-a@3", 1.0)]),
    ("acme-a:0.7+acme-b:0.3", [("acme-a", 0.7), ("acme-b", 0.3)]),
    ("a@2:-1.5+b:4+c:.25+d:0", [("a@2", -1.5), ("b", 4.0), ("c", 0.25), ("d", 0.0)]),
    ("a:1.+b:-4.0", [("a", 1.0), ("b", -4.0)]),
])
def test_good_model_ids_parse(model, parts):
    assert [(p.id, p.weight) for p in ModelRef.parse(model).parts] == parts


@pytest.mark.parametrize("model", [
    "a:0.5", "a:0.5+", "+a:0.5", "a:0.5+b", "a+b", "a:0.5+b:0.5+c:1+d:1+e:1", "a:0.5+a:0.5",
    "a:4.01+b:1", "a:-5+b:1", "a:nan+b:1", "a:inf+b:1", "a:1e3+b:1", "a:1_0+b:1", "a: 1+b:1", "a:+1+b:1",
    "a:0x1+b:1", "../a:1+b:1", "a/b:1+c:1", "a::1+b:1", "a:1:1+b:1", ":1+b:1", "a@x:1+b:1", "",
])
def test_bad_model_ids_are_a_400_on_model(model):
    with pytest.raises(BadRequestError) as e:
        ModelRef.parse(model)
    assert e.value.param == "model"


def test_metrics_label_is_the_sorted_names_without_weights():
    label = ModelRef.parse("zeta:0.7+alpha@2:0.3").label
    assert label == ModelRef.parse("alpha@2:-1+zeta:2").label == "alpha@2+zeta"
    assert ModelRef.parse("zeta").label == "zeta"


# ---- the kernel -------------------------------------------------------------------------------


def test_weighted_terms_match_the_weighted_sum_of_references():
    A, B, scale = _weights()
    x = torch.randn(9, 12)
    idx = torch.tensor([[1, 1, 0, 2, 3, 3, 4, 0, 2],
                        [2, 4, 0, 0, 1, 1, 0, 0, 3],
                        [3, 0, 0, 0, 2, 2, 0, 0, 0]])
    w = torch.tensor([[0.7, 1.0, 0, 1.0, -1.5, -1.5, 1.0, 0, 2.0],
                      [0.3, 2.5, 0, 0, 0.5, 0.5, 0, 0, -4.0],
                      [0.1, 0, 0, 0, 3.0, 3.0, 0, 0, 0]])
    got = lora_terms(x, A, B, scale, [LoRATerm.of(i, wj) for i, wj in zip(idx, w)])
    want = sum(wj[:, None] * lora_reference(x, A, B, scale, i) for i, wj in zip(idx, w))
    torch.testing.assert_close(got, want)


def test_unit_weights_take_the_single_adapter_path():
    ctx = ForwardContext.build(torch.tensor([[1, 0, 2], [0, 0, 3]]), [], None,
                               torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.5]]))
    assert ctx.terms[0].weight is None and torch.equal(ctx.terms[1].weight, torch.tensor([0.0, 0.0, 0.5]))
    assert ForwardContext.build(torch.tensor([1, 2]), [], None).terms[0].weight is None


# ---- the engine against the merged reference ----------------------------------------------------


def weighted_merge(builder, parts: list[tuple[Adapter, float]]):
    """The base with Σ wᵢ ΔWᵢ merged in, one parent at a time (each ΔW scaled by its weight)."""
    model = builder(0)
    sd = model.state_dict()
    for adapter, w in parts:
        scaled = {p: dataclasses.replace(m, scale=m.scale * w) for p, m in adapter.modules.items()}
        sd = merge_state_dict(sd, Adapter(adapter.config, scaled, {}, adapter.meta))
    model.load_state_dict(sd)
    return model


def reference(arch, paths, model):
    """ad0 and ad4 share their targets: merge their `cat` composition (the repo's exact blend); the
    others adapt different modules: merge each weighted ΔW in turn."""
    builder = BUILDERS[arch]
    if model == "tiny":
        return builder(0)
    ref = ModelRef.parse(model)
    parts = [(read_adapter(paths[p.id]), p.weight) for p in ref.parts]
    if set(ref.adapters) == {"ad0", "ad4"}:
        cat = compose([a for a, _ in parts], [w for _, w in parts], "cat").adapter
        return weighted_merge(builder, [(cat, 1.0)])
    return weighted_merge(builder, parts)


MODELS = ["ad0:0.7+ad4:0.3", "ad1:0.5+ad3:-1.25+ad2:2", "ad0", "tiny", "ad3:1.5+ad1:0.25", "ad4"]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_composed_greedy_equals_generate_on_the_merged_blend(arch, tmp_path):
    engine, paths = make_engine(arch, tmp_path, max_batch=8)
    ps = prompts(len(MODELS), seed=11)
    cols = [Collector() for _ in MODELS]
    for m, p, c in zip(MODELS, ps, cols):                            # one mixed batch
        engine.submit("t", m, p, SamplingParams(20, temperature=0.0), c)
    engine.run_until_idle()
    assert not any(engine.pool.pinned(s) for s in range(1, engine.pool.max_slots + 1))
    for m, p, c in zip(MODELS, ps, cols):
        assert c.error is None and c.done is not None, m
        mask = torch.ones(1, len(p), dtype=torch.long)
        want = reference(arch, paths, m).generate(torch.tensor([p]), attention_mask=mask, max_new_tokens=20,
                                                  do_sample=False)[0, len(p):].tolist()
        assert c.tokens == want, m


def test_composed_logits_match_the_merged_blend(tmp_path):
    engine, paths = make_engine("llama", tmp_path, screen_head=False)
    ps = prompts(len(MODELS), seed=5)
    for m, p in zip(MODELS, ps):
        engine.submit("t", m, p, SamplingParams(1, temperature=0.0), Collector())
    logits = step_logits(engine)
    assert logits.shape[0] == len(MODELS)
    for row, m, p in zip(logits, MODELS, ps):
        want = reference("llama", paths, m)(torch.tensor([p])).logits[0, -1]
        torch.testing.assert_close(row, want, atol=1e-4, rtol=1e-4)


def test_a_composition_weighted_one_and_zero_equals_its_single_adapter(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=4)
    single, composed = Collector(), Collector()
    engine.submit("t", "ad1", [5, 6, 7, 8], SamplingParams(16, temperature=0.0), single)
    engine.submit("t", "ad1:1+ad3:0", [5, 6, 7, 8], SamplingParams(16, temperature=0.0), composed)
    engine.run_until_idle()
    assert composed.tokens == single.tokens


def test_parts_are_loaded_on_demand_when_slots_are_few(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=5, max_slots=2)
    cols = {m: Collector() for m in ["ad0:0.5+ad1:0.5", "ad2", "ad3:1+ad4:-1", "ad1:2+ad2:1", "ad4"]}
    for m, c in cols.items():
        engine.submit("t", m, [5, 6, 7], SamplingParams(4, temperature=0.0), c)
    engine.run_until_idle()
    assert all(c.done is not None and c.done.completion_tokens == 4 for c in cols.values())
    assert not engine.pool.pinned(1) and not engine.pool.pinned(2)


def test_unknown_part_base_part_and_too_many_parts_are_refused(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=3, max_slots=2)
    with pytest.raises(ModelNotFoundError, match="'nope'"):
        engine.submit("t", "ad0:0.5+nope:0.5", [5, 6], SamplingParams(2), Collector())
    with pytest.raises(BadRequestError, match="base"):
        engine.submit("t", "ad0:0.5+tiny:0.5", [5, 6], SamplingParams(2), Collector())
    with pytest.raises(BadRequestError, match="slots"):
        engine.submit("t", "ad0:1+ad1:1+ad2:1", [5, 6], SamplingParams(2), Collector())
    assert not len(engine.queue)


def test_removing_a_part_fails_the_waiting_composition_with_404(tmp_path):
    engine, _ = make_engine("llama", tmp_path, n_adapters=2)
    c = Collector()
    engine.submit("t", "ad0:0.5+ad1:0.5", [5, 6], SamplingParams(2), c)
    engine.remove_adapter("ad1")
    assert isinstance(c.error, ModelNotFoundError) and not len(engine.queue)
