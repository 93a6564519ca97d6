"""The engine and the trainer on the real default base, Gemma 3 270M (slow): what the tiny-model
tests cannot show — Gemma's 262k-row head through the int8 screen, its sliding-window attention in
the paged cache, int8 weights on real activations, a training step through the chunked loss.

One mixed batch (two adapters and the base, greedy) must give PEFT's greedy tokens; the int8
engine must give mostly the same tokens; a two-step `loraops train` must write a trained adapter
that the engine loads (base fingerprint checked) and serves.
"""

import json

import pytest
import torch
from cli import run_cli

from loraops.lora import Adapter, LoRAConfig, ModuleLoRA, save_adapter, select_targets
from loraops.models import DEFAULT_BASE, load_base
from loraops.serve.engine import Engine, EngineConfig, TokenEvent
from loraops.serve.sampling import SamplingParams

pytestmark = pytest.mark.slow
PROMPTS = ["Name a colour.", "What is an invoice?"]
NEW = 6


def small_adapter(model, seed: int, fingerprint: str) -> Adapter:
    """A random q/v adapter small enough that Gemma stays fluent, large enough to change its answers."""
    g = torch.Generator().manual_seed(seed)
    config = LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    modules = {p: ModuleLoRA(torch.randn(4, model.get_submodule(p).in_features, generator=g) * 0.05,
                             torch.randn(model.get_submodule(p).out_features, 4, generator=g) * 0.05,
                             config.scale(4, 8)) for p in select_targets(model, config)}
    return Adapter(config, modules, {}, {"base_fingerprint": fingerprint})


def chat_ids(tok, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def engine_answers(engine, jobs: list[tuple[str, str]]) -> list[list[int]]:
    """All jobs (model, prompt) in one batch, greedy; -> their tokens (EOS dropped)."""
    out = [[] for _ in jobs]
    for (model, prompt), tokens in zip(jobs, out):
        engine.submit("t", model, chat_ids(engine.tokenizer, prompt), SamplingParams(NEW, temperature=0.0),
                      lambda ev, tokens=tokens: tokens.append(ev.token_id)
                      if isinstance(ev, TokenEvent) and ev.token_id not in engine.eos_ids else None)
    engine.run_until_idle()
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma-adapters")
    base = load_base(DEFAULT_BASE)
    return {name: str(save_adapter(small_adapter(base.model, seed, base.info.fingerprint), d / name))
            for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def jobs():
    return [(model, p) for p in PROMPTS for model in ("a", "b", DEFAULT_BASE)]


@pytest.fixture(scope="module")
def fp32_engine(adapters):
    engine = Engine(load_base(DEFAULT_BASE), EngineConfig(max_slots=3, max_rank=8))   # screened head: default
    assert engine.runner.head.screen is not None
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    return engine


@pytest.fixture(scope="module")
def fp32_answers(fp32_engine, jobs):
    return engine_answers(fp32_engine, jobs)


def test_a_mixed_batch_on_gemma_gives_peft_greedy_tokens(adapters, jobs, fp32_answers):
    from peft import PeftModel

    base = load_base(DEFAULT_BASE)
    peft = PeftModel.from_pretrained(base.model, adapters["a"], adapter_name="a").eval()
    peft.load_adapter(adapters["b"], adapter_name="b")
    from loraops.evals.generate import stop_ids

    stops = set(stop_ids(base.model, base.tokenizer))
    for (model, prompt), got in zip(jobs, fp32_answers):
        ids = torch.tensor([chat_ids(base.tokenizer, prompt)])
        with torch.no_grad():
            if model == DEFAULT_BASE:
                with peft.disable_adapter():
                    out = peft.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=sorted(stops))
            else:
                peft.set_adapter(model)
                out = peft.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=sorted(stops))
        want = [t for t in out[0, ids.shape[1]:].tolist() if t not in stops]
        assert got == want, (model, prompt)
    # not vacuous: on some prompt, each adapter answers otherwise than the base and the other adapter
    by_model = {m: [a for (mm, _), a in zip(jobs, fp32_answers) if mm == m] for m in ("a", "b", DEFAULT_BASE)}
    assert by_model["a"] != by_model[DEFAULT_BASE] and by_model["b"] != by_model[DEFAULT_BASE]
    assert by_model["a"] != by_model["b"]


def test_the_int8_engine_mostly_agrees_with_fp32_on_gemma(adapters, jobs, fp32_answers):
    from loraops.models.quantize import quantize_for_inference_

    base = load_base(DEFAULT_BASE)
    quantize_for_inference_(base.model, base.tokenizer)
    engine = Engine(base, EngineConfig(max_slots=2, max_rank=8))
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    got = engine_answers(engine, jobs)
    agree = [sum(x == y for x, y in zip(a, b)) / max(len(a), 1) for a, b in zip(fp32_answers, got)]
    # int8 is not bit-exact: most answers identical, and every answer starts the same way
    assert sum(a == b for a, b in zip(fp32_answers, got)) >= len(jobs) // 2, agree
    assert all(a[:2] == b[:2] for a, b in zip(fp32_answers, got)), agree


def test_a_short_training_on_gemma_writes_an_adapter_the_engine_serves(tmp_path, fp32_engine):
    from safetensors.torch import load_file

    from loraops.demo.tasks import generate

    data = tmp_path / "data.jsonl"
    rows = [{"prompt": r["messages"][0]["content"], "completion": r["messages"][1]["content"]}
            for r in generate("tickets", 8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("train", "--data", data, "--out", tmp_path / "run", "--rank", "4", "--targets", "q_proj,v_proj",
                     "--max-steps", "2", "--batch-size", "1", "--seq-len", "96", "--lr", "5e-3", "--no-progress",
                     timeout=900, env={"OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "loss" in r]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    weights = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)           # B starts at zero: it was trained
    fp32_engine.add_adapter("trained", str(tmp_path / "run" / "adapter"))   # bound to Gemma: its fingerprint fits
    assert all(answer for answer in engine_answers(fp32_engine, [("trained", p) for p in PROMPTS]))
