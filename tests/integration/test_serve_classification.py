"""Classification serving over real HTTP on a tiny random BERT (a masked-LM checkpoint, as
bert-base-uncased ships: no pooler, no classifier): adapters with their own heads (3 labels, 2
labels) and LoRA share batches, and each request's probabilities equal that adapter alone, in
loraops and in PEFT (≤ 1e-5). Plus the engine driven by hand, so that one forward surely mixes
adapters, the base and an overflowing adapter. (Hostile requests, tenancy and the overflowing
adapter over HTTP: tests/hostile/test_hostile_classifications.py.)"""

import concurrent.futures as cf
import sys
from pathlib import Path

import httpx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import SENTIMENT, random_classifier, save_classifiers  # noqa: E402
from tiny import save_tiny, save_tiny_encoder  # noqa: E402

from loraops.lora import save_adapter  # noqa: E402
from loraops.models import fingerprint_dir, load_encoder_base  # noqa: E402

ACME, BETA = "sk-acme-classify-01", "sk-beta-classify-02"
TEXTS = ["great good happy love", "bad awful sad", "the invoice number today", "hate it", "table 7",
         "a much longer text about an invoice that is great and then awful and then great again"]
TENANTS = f"""
[tenants.acme]
api_keys = ["{ACME}"]
adapters = ["sentiment"]

[tenants.beta]
api_keys = ["{BETA}"]
adapters = ["spam"]
allow_base = true
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    enc = save_tiny_encoder(d / "enc")
    dirs = save_classifiers(load_encoder_base(str(enc)).model, d, {"base_fingerprint": fingerprint_dir(enc),
                                                                    "base_name": enc.name})
    (d / "tenants.toml").write_text(TENANTS)
    server = Server(["--base", str(enc), "--tenants", str(d / "tenants.toml"), "--max-slots", "3", "--max-rank", "8",
                     *[f"--adapter={n}={p}" for n, p in dirs.items()]], d / "server.log")
    yield {"server": server, "enc": enc, "dirs": dirs, "d": d}
    log = server.log()
    server.stop()
    assert "Traceback" not in log, log[-4000:]


def classify(env, key, model, texts):
    return httpx.post(env["server"].url + "/v1/classifications", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "input": texts}, timeout=60)


def probs(r) -> list[list[float]]:
    assert r.status_code == 200, r.text
    return [list(row["scores"].values()) for row in r.json()["data"]]


def peft_probs(enc: Path, adapter_dir: Path, k: int, texts: list[str]) -> torch.Tensor:
    """PEFT's model for the adapter, one text at a time (no padding): the oracle."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(enc)
    base = AutoModelForSequenceClassification.from_pretrained(enc, num_labels=k, ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return torch.stack([torch.softmax(model(**tok(t, return_tensors="pt")).logits[0], -1) for t in texts])


def test_concurrent_tenants_get_their_adapters_answers_alone_and_peft_s(env):
    solo = {m: probs(classify(env, key, m, TEXTS)) for m, key in [("sentiment", ACME), ("spam", BETA)]}
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [(m, i, pool.submit(classify, env, key, m, [TEXTS[i]]))
                   for i in range(len(TEXTS)) for m, key in [("sentiment", ACME), ("spam", BETA)]]
        for m, i, f in futures:
            assert torch.allclose(torch.tensor(probs(f.result())[0]), torch.tensor(solo[m][i]), atol=1e-5)
    for m, k in [("sentiment", 3), ("spam", 2)]:
        oracle = peft_probs(env["enc"], env["dirs"][m], k, TEXTS)
        assert (torch.tensor(solo[m]) - oracle).abs().max() <= 1e-5


def test_the_response_names_the_adapters_labels_and_counts_tokens(env):
    r = classify(env, ACME, "sentiment", "great good happy love")
    body = r.json()
    assert r.status_code == 200 and body["object"] == "list" and body["model"] == "sentiment"
    row = body["data"][0]
    assert row["index"] == 0 and list(row["scores"]) == SENTIMENT
    assert row["label"] == max(row["scores"], key=row["scores"].get)
    assert abs(sum(row["scores"].values()) - 1) < 1e-5
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    spam = classify(env, BETA, "spam", ["x", "y"]).json()["data"]
    assert [row["index"] for row in spam] == [0, 1] and list(spam[0]["scores"]) == ["LABEL_0", "LABEL_1"]


def test_a_base_without_a_trained_head_is_a_400_naming_why(env):
    r = classify(env, BETA, "enc", "x")
    assert r.status_code == 400 and "no trained classification head" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory):
    """An EncoderEngine (no threads) on a *ForSequenceClassification checkpoint, whose head is
    trained (3 labels, LABEL_0..2), so the base serves too; adapters a (its own head, the base's
    pooler), b (2 labels, its own pooler) and huge (overflows)."""
    from loraops.serve.encoder import EncoderEngine

    d = tmp_path_factory.mktemp("by-hand")
    cls = save_tiny(d / "cls", "bert")
    model = load_encoder_base(str(cls)).model
    dirs = {n: save_adapter(random_classifier(model, r, t, labels, seed=seed, scale=scale, saves=saves), d / n)
            for n, r, t, labels, seed, scale, saves in [
                ("a", 4, ["query", "value"], SENTIMENT, 5, 1.0, ("classifier",)),
                ("b", 2, ["key"], ["no", "yes"], 6, 1.0, ("classifier", "bert.pooler.dense")),
                ("huge", 4, ["query"], SENTIMENT, 7, 1e20, ("classifier",))]}
    engine = EncoderEngine(load_encoder_base(str(cls)))
    for name, path in dirs.items():
        engine.add_adapter(name, str(path))
    return engine, cls, dirs, d


def test_one_forward_mixes_adapters_and_the_base_each_row_as_alone(by_hand):
    from loraops.serve.encoder import Classified

    engine, cls, dirs, _ = by_hand
    ids = [engine.tokenizer(t)["input_ids"] for t in TEXTS]
    jobs = {"a": ("a", [0, 5, 2]), "base": ("cls", [1, 5]), "b": ("b", [3, 0, 5]), "a2": ("a", [4]),
            "huge": ("huge", [0, 1])}

    def run(tags):
        outs = {}
        for tag in tags:
            model_id, rows = jobs[tag]
            engine.submit("t", model_id, [ids[i] for i in rows], lambda o, tag=tag: outs.__setitem__(tag, o))
        assert engine.step() and not len(engine.waiting)           # every request in this one step
        return outs

    run(["a"])                                                     # the first step applies the loads
    mixed = run(list(jobs))
    assert mixed["huge"].error.code == "non_finite_output"
    for tag in ["a", "base", "b", "a2"]:
        alone = run([tag])[tag]
        assert isinstance(mixed[tag], Classified) and mixed[tag].labels == alone.labels
        assert (mixed[tag].probs - alone.probs).abs().max() <= 1e-5
    assert mixed["b"].labels == ["no", "yes"] and mixed["base"].labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    for tag, k in [("a", 3), ("b", 2)]:
        oracle = peft_probs(cls, dirs[tag], k, [TEXTS[i] for i in jobs[tag][1]])
        assert (mixed[tag].probs - oracle).abs().max() <= 1e-5


def test_adapters_that_do_not_fit_the_encoder_are_refused_with_the_reason(by_hand):
    from loraops.errors import LoraOpsError

    engine, cls, _, d = by_hand
    model = load_encoder_base(str(cls)).model

    def refused(name, reason, edit):
        adapter = random_classifier(model, 2, ["query"], SENTIMENT, seed=8, saves=("classifier",))
        edit(adapter)
        with pytest.raises(LoraOpsError, match=reason):
            engine.read_checked(str(save_adapter(adapter, d / name)))

    refused("causal", "CAUSAL_LM adapter cannot be served", lambda a: setattr(a.config, "task_type", "CAUSAL_LM"))
    refused("embeddings", "saves 'bert.embeddings", lambda a: (
        a.config.modules_to_save.append("bert.embeddings.LayerNorm"),
        a.saved_modules.update({"bert.embeddings.LayerNorm.weight": torch.ones(32)})))
    refused("labels", "'labels' must be 3 distinct", lambda a: a.meta.update(labels=["x", "x", "y"]))
    refused("one-output", "has 1 output", lambda a: (a.meta.clear(), a.saved_modules.update(
        {"classifier.weight": torch.ones(1, 32), "classifier.bias": torch.ones(1)})))
    refused("shape", "classifier.weight: the adapter's is", lambda a: a.saved_modules.update(
        {"classifier.weight": torch.ones(3, 16)}))


def test_a_roberta_head_is_served_as_peft_gives_it_and_deberta_is_refused_at_start(tmp_path):
    """RoBERTa's head is a module of two linears over the whole sequence (no pooler); DeBERTa-v2
    runs its query/key projections over relative-position embeddings that every row shares."""
    from transformers import (DebertaV2Config, DebertaV2ForSequenceClassification, RobertaConfig,
                              RobertaForSequenceClassification)

    from loraops.errors import ConfigError
    from loraops.lora import Adapter, LoRAConfig, ModuleLoRA, select_targets
    from loraops.serve.encoder import EncoderEngine
    from tiny import tiny_encoder_tokenizer

    tok = tiny_encoder_tokenizer()
    size = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_labels=3, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    for name, model in [("roberta", RobertaForSequenceClassification(RobertaConfig(max_position_embeddings=130, **size))),
                        ("deberta", DebertaV2ForSequenceClassification(DebertaV2Config(
                            max_position_embeddings=128, relative_attention=True, pos_att_type=["p2c", "c2p"], **size)))]:
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    with pytest.raises(ConfigError, match="not one row per token"):
        EncoderEngine(load_encoder_base(str(tmp_path / "deberta")))
    engine = EncoderEngine(load_encoder_base(str(tmp_path / "roberta")))
    config = LoRAConfig(r=2, alpha=4, target_modules=["query", "value"], modules_to_save=["classifier"],
                        task_type="SEQ_CLS")
    g = torch.Generator().manual_seed(3)
    modules = {p: ModuleLoRA(torch.randn(2, 32, generator=g) * 0.3, torch.randn(32, 2, generator=g) * 0.3, 2.0)
               for p in select_targets(load_encoder_base(str(tmp_path / "roberta")).model, config)}
    saved = {"classifier.dense.weight": (32, 32), "classifier.dense.bias": (32,),
             "classifier.out_proj.weight": (2, 32), "classifier.out_proj.bias": (2,)}
    adapter = Adapter(config, modules, {k: torch.randn(*s, generator=g) for k, s in saved.items()}, {"labels": ["n", "y"]})
    engine.add_adapter("ad", str(save_adapter(adapter, tmp_path / "ad")))
    outs = {}
    ids = [tok(t)["input_ids"] for t in TEXTS[:3]]
    engine.submit("t", "ad", ids, lambda o: outs.__setitem__("ad", o))
    engine.submit("t", "roberta", ids, lambda o: outs.__setitem__("base", o))   # 3 labels, the same forward
    assert engine.step() and not len(engine.waiting)
    assert outs["ad"].labels == ["n", "y"] and len(outs["base"].labels) == 3
    assert (outs["ad"].probs - peft_probs(tmp_path / "roberta", tmp_path / "ad", 2, TEXTS[:3])).abs().max() <= 1e-5
    plain = load_encoder_base(str(tmp_path / "roberta")).model
    with torch.no_grad():
        want = torch.cat([torch.softmax(plain(input_ids=torch.tensor([x])).logits, -1) for x in ids])
    assert (outs["base"].probs - want).abs().max() <= 1e-5
