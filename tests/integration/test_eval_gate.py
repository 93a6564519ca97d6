"""Forgetting and the promotion gate on a small world where the outcome is known by construction.

A tiny Llama is "pretrained" (seeded, seconds) on the general suite itself (Python-docs passages and
the generated questions) plus a few lines of JSON, so it has general ability to lose and knows JSON
syntax. Two LoRA adapters learn a narrow JSON extraction task ("Order: 3 apples for Anna." ->
{"kind": "order", "qty": 3}):
  good: gentle (lr 1e-2 decaying, 200 steps) with replay of general text, as one would train it;
  bad:  brutal (lr 3e-2, rank 16, alpha 64, 150 steps) on the narrow set only.
Measured margins are wide (good: forgetting ~0.01, field accuracy ~0.9 vs 0.0; bad: perplexity up
~200x, all questions lost), so the assertions below hold with room to spare.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli import assert_one_line_error, run_cli
from transformers import LlamaConfig, LlamaForCausalLM

from loraops.evals import EvalConfig, GateConfig, PromotionGate, evaluate
from loraops.evals.general import corpus_passages, general_questions
from loraops.evals.generate import encode_prompt
from loraops.lora import LoRAConfig, extract, inject, save_adapter, trainable_parameters
from loraops.models import fingerprint_dir
from tiny import _CORPUS, tiny_tokenizer

SUITE = EvalConfig(general_passages=8, general_tokens=64, questions_per_kind=4)
_NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Greta", "Hugo"]
_ITEMS = ["apples", "pears", "plums", "lemons", "melons", "grapes"]
# JSON the base sees in pretraining: the syntax and the keys, never the task.
_JSON_LINES = [json.dumps({"color": c, "kind": k, "qty": n})
               for c, k, n in [("red", "note", 4), ("blue", "item", 7), ("green", "box", 2), ("black", "tool", 9)]]


def orders(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        qty, item, name = rng.randint(2, 9), rng.choice(_ITEMS), rng.choice(_NAMES)
        out.append({"prompt": f"Order: {qty} {item} for {name}.\nJSON:",
                    "completion": " " + json.dumps({"kind": "order", "qty": qty})})
    return out


def _batch(rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)  # right-padded: causal attention never looks at the pads
    ids = torch.tensor([x + [0] * (width - len(x)) for x, _ in rows])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
    return ids, labels


def _loss(model, rows: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    ids, labels = _batch(rows)
    return model(input_ids=ids, labels=labels).loss


def _general_rows(tok) -> list[tuple[list[int], list[int]]]:
    texts = [q.prompt + " " + q.answer for q in general_questions(SUITE.questions_per_kind)]
    rows = [encode_prompt(tok, p)[:SUITE.general_tokens] for p in corpus_passages(SUITE.general_passages)]
    rows += [encode_prompt(tok, t) + [tok.eos_token_id] for t in texts]
    return [(r, r) for r in rows]


def pretrain(path: Path, steps: int = 100) -> Path:
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    rows = _general_rows(tok) + [(r, r) for r in (encode_prompt(tok, t) + [tok.eos_token_id]
                                                  for t in [*_CORPUS, *_JSON_LINES])]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = _loss(model, rows)  # the whole corpus is one batch
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def train_adapter(base: Path, out: Path, lr: float, steps: int, rank: int, alpha: float, replay: int) -> Path:
    """Completion-only loss on 64 orders, batches of 8, linear decay; `replay` general rows per step."""
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = LlamaForCausalLM.from_pretrained(base)
    config = LoRAConfig(r=rank, alpha=alpha, target_modules="all-linear")
    inject(model, config)
    examples = []
    for o in orders(64, seed=1):
        prompt = encode_prompt(tok, o["prompt"])
        completion = tok(o["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        examples.append((prompt + completion, [-100] * len(prompt) + completion))
    general = _general_rows(tok)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = _loss(model, [examples[i] for i in torch.randint(len(examples), (8,), generator=g).tolist()])
        if replay:
            rows = [general[i] for i in torch.randint(len(general), (replay,), generator=g).tolist()]
            loss = loss + _loss(model, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    meta = {"base_fingerprint": fingerprint_dir(base), "base_name": base.name}
    return save_adapter(extract(model.eval(), config, meta), out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # Tiny models gain nothing from a second thread, and on a loaded 2-core machine it costs them 5x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-world")
    try:
        base = pretrain(root / "base")
        data = root / "data"
        data.mkdir()
        (data / "val.jsonl").write_text("".join(json.dumps(o) + "\n" for o in orders(24, seed=2)))
        good = train_adapter(base, root / "good", lr=1e-2, steps=200, rank=8, alpha=16, replay=2)
        bad = train_adapter(base, root / "bad", lr=3e-2, steps=150, rank=16, alpha=64, replay=0)
        yield SimpleNamespace(base=base, data=data, good=good, bad=bad)
    finally:
        torch.set_num_threads(threads)


def test_gentle_adapter_gains_on_its_domain_and_forgets_little(world):
    report = evaluate(str(world.base), world.good, EvalConfig(**{**SUITE.__dict__, "data": world.data}))
    assert report.primary_metric == "field_accuracy"
    assert report.domain_base.field_accuracy < 0.2
    assert report.domain_gain > 0.4
    assert report.forgetting.score < 0.05
    assert report.general.qa_kept >= 6  # the base answers the questions it was taught


def test_overtrained_adapter_is_blocked_for_forgetting_and_a_good_one_passes_then_rollback_restores_it(world):
    pytest.importorskip("sqlalchemy")
    from loraops.errors import GateFailedError
    from loraops.registry import Registry

    gate = PromotionGate(GateConfig(), base=str(world.base), data=world.data, eval_config=SUITE)
    with Registry() as reg:
        good = reg.push(world.good, "orders", register_base=True)
        bad = reg.push(world.bad, "orders")
        reg.promote("orders", good.version, gate=gate, actor="ci")
        assert reg.resolve("orders@production").version == good.version
        stored = reg.resolve(good.ref).eval_results  # the gate's evaluation is kept on the version
        assert stored["domain_gain"] > 0.4 and stored["forgetting"]["score"] < 0.10

        with pytest.raises(GateFailedError, match=r"forgetting \d+\.\d+ .*> max 0\.100"):
            reg.promote("orders", bad.version, gate=gate, actor="ci")
        assert reg.resolve("orders@production").version == good.version
        assert reg.resolve(bad.ref).eval_results["forgetting"]["score"] > 1.0

        # An operator overrides the gate; rolling back gives production back to the good version.
        reg.promote("orders", bad.version, gate=gate, force=True, reason="incident drill", actor="ci")
        assert reg.resolve("orders@production").version == bad.version
        assert reg.rollback("orders", actor="ci").version == good.version
        assert reg.resolve("orders@production").version == good.version

        # Stored evaluations are reused: without data the gate still decides, and loads no model.
        ok, reason = PromotionGate(GateConfig(margin=2.0))(reg, "orders", good.version)
        assert not ok and "margin 2.000" in reason


def test_registry_promote_with_gate_refuses_from_the_command_line(world):
    pytest.importorskip("sqlalchemy")
    from loraops.registry import Registry

    with Registry() as reg:
        reg.push(world.bad, "orders", register_base=True)
    result = run_cli("registry", "promote", "orders", "1", "--gate", "--base", world.base, "--data", world.data,
                     env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(result, "gate refused orders@1", "forgetting")
    with Registry() as reg:
        assert "production" not in reg.show("orders").stages
