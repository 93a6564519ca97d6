"""BERT-style classification end to end on a tiny random encoder: curate {"text", "label"} data,
train (LoRA + modules_to_save head), load in PEFT with the same logits, evaluate (accuracy,
macro-F1, confusion vs the untrained head; masked-LM forgetting) and gate."""

import json
import math

import pytest
import torch

from loraops.data import CurateOptions, curate
from loraops.lora import apply_adapter, read_adapter
from loraops.train import TrainConfig, run
from loraops.train.classify import load_classifier_base
from tiny import save_tiny_encoder, sentiment_records

LABELS = ["neg", "neutral", "pos"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    enc = save_tiny_encoder(root / "enc")
    records = sentiment_records(60)
    records += [records[0], {"text": records[1]["text"], "label": "pos"},  # a duplicate, a conflicting label
                {"text": "mail me at jane.doe@example.com, it was great", "label": "pos"}]
    (root / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = curate(root / "raw.jsonl", root / "data", CurateOptions(val_fraction=0.25, near_dedup=False))
    result = run(TrainConfig(base=str(enc), data=str(root / "data"), out=str(root / "run"), task="classification",
                             max_steps=24, batch_size=8, lr=3e-3, warmup_steps=2, class_weights="balanced",
                             progress=False))
    return root, enc, report, result


def test_curation_keeps_labels_dedups_scrubs_and_splits_stratified(trained):
    root, _, report, _ = trained
    assert report.dropped["exact_duplicate"] == 2 and report.pii["EMAIL"] == 1
    assert set(report.labels["val"]) == set(LABELS) and set(report.labels["train"]) == set(LABELS)
    for label in LABELS:  # each label's share of val is val_fraction, to the nearest record
        n = report.labels["train"][label] + report.labels["val"][label]
        assert report.labels["val"][label] == max(1, round(0.25 * n))
    lines = [json.loads(x) for x in (root / "data" / "train.jsonl").read_text().splitlines()]
    assert all(set(r) == {"text", "label"} for r in lines)
    assert not any("example.com" in r["text"] for r in lines)


def test_training_lowers_the_loss_and_saves_a_peft_seq_cls_adapter(trained):
    root, _, _, result = trained
    losses = [r["loss"] for r in map(json.loads, (root / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r and "examples" in r]
    assert len(losses) == 24 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and set(cfg["modules_to_save"]) == {"classifier", "bert.pooler.dense"}
    meta = read_adapter(result.adapter_dir).meta
    assert meta["labels"] == LABELS and meta["class_weights"]["pos"] > 0


def test_peft_loads_the_adapter_with_the_same_logits(trained):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    _, enc, _, result = trained
    adapter = read_adapter(result.adapter_dir)
    ours = load_classifier_base(str(enc), LABELS, seed=0).model
    apply_adapter(ours, adapter)
    theirs = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(enc, num_labels=3),
                                       result.adapter_dir).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 2], [1, 60, 61, 2, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        diff = (ours.eval()(input_ids=ids, attention_mask=mask).logits
                - theirs(input_ids=ids, attention_mask=mask).logits).abs().max().item()
    assert diff <= 1e-5


def test_eval_reports_accuracy_macro_f1_confusion_and_forgetting(trained):
    from loraops.evals import EvalConfig, EvalReport, evaluate_ref
    from loraops.evals.table import summary_table

    root, enc, report, result = trained
    evaluation, stored = evaluate_ref(str(enc), str(result.adapter_dir),
                                      EvalConfig(data=root / "data", general_passages=4, general_tokens=32))
    base, adapted = evaluation.domain_base, evaluation.domain_adapted
    assert adapted.labels == LABELS and adapted.examples == report.val
    assert sum(map(sum, adapted.confusion)) == adapted.examples == sum(map(sum, base.confusion))
    assert adapted.accuracy > base.accuracy and evaluation.domain_gain == adapted.macro_f1 - base.macro_f1 > 0
    assert evaluation.general.measure == "masked-lm" and evaluation.general.tokens > 0
    assert math.isfinite(evaluation.forgetting.score) and evaluation.general.kl_mean > 0
    assert EvalReport.from_dict(json.loads((result.adapter_dir / "eval.json").read_text())) == evaluation
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(summary_table(evaluation))
    text = console.export_text()
    assert "macro-F1" in text and "masked-LM perplexity" in text and "confusion pos" in text


def test_the_promotion_gate_applies(trained, tmp_path):
    from loraops.evals import EvalConfig, GateConfig, PromotionGate
    from loraops.registry import Registry

    root, enc, _, result = trained
    small = EvalConfig(general_passages=4, general_tokens=32)
    with Registry() as reg:
        reg.push(result.adapter_dir, "sentiment", register_base=True)
        ok, why = PromotionGate(GateConfig(max_forgetting=1e9), base=str(enc), data=root / "data",
                                eval_config=small)(reg, "sentiment", 1)
        assert ok and "macro_f1" in why
        ok, why = PromotionGate(GateConfig(margin=1.0), base=str(enc), data=root / "data",
                                eval_config=small)(reg, "sentiment", 1)
        assert not ok  # no gain can beat a margin of 1.0 (reuses the stored evaluation)


def test_merge_writes_a_classifier_with_the_adapters_logits(trained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from loraops.models.merge_model import merge_to_dir

    _, enc, _, result = trained
    report = merge_to_dir(str(enc), result.adapter_dir, tmp_path / "merged", tolerance=1e-4)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.id2label == dict(enumerate(LABELS)) and report.max_abs_diff <= 1e-4
