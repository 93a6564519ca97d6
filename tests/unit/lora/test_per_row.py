"""Per-row classification heads: a batch mixing two tenants' heads (3 and 2 labels) gives each row
exactly what that tenant's adapter gives it alone (the reference is the full model with one adapter)."""

import pytest
import torch

from loraops.errors import AdapterMismatchError
from loraops.lora import LoRAConfig, apply_adapter, extract, inject
from loraops.lora.per_row import module_params, per_row_apply
from tiny import input_ids
from transformers import BertConfig, BertForSequenceClassification


def _bert(num_labels: int) -> BertForSequenceClassification:
    torch.manual_seed(0)  # one base encoder for every tenant; only the head's width differs
    cfg = BertConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64, num_labels=num_labels)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
    return model


def _tenant(num_labels: int, seed: int):
    model = _bert(num_labels)
    cfg = LoRAConfig(r=2, target_modules=["query", "value"], init="random", modules_to_save=["classifier"],
                     task_type="SEQ_CLS")
    torch.manual_seed(seed)
    inject(model, cfg)
    with torch.no_grad():
        model.classifier.weight.normal_()
        model.classifier.bias.normal_()
    return extract(model, cfg)


def _solo(adapter, num_labels, ids):
    """The adapted model's logits and the classifier's input (the pooled features) for `ids`."""
    model = _bert(num_labels)
    apply_adapter(model, adapter)
    seen = {}
    model.classifier.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return logits, seen["x"]


def test_mixed_heads_equal_each_tenant_alone():
    a, b = _tenant(3, seed=1), _tenant(2, seed=2)
    ids = input_ids(batch=4)
    logits_a, feats_a = _solo(a, 3, ids[:2])
    logits_b, feats_b = _solo(b, 2, ids[2:])
    head = _bert(3).classifier  # the base's module: only its structure is used
    pa, pb = module_params(a, "classifier"), module_params(b, "classifier")
    order = [0, 2, 1, 3]  # rows interleaved: a, b, a, b
    feats = torch.cat([feats_a, feats_b])[order]
    out = per_row_apply(head, feats, [pa, pb, pa, pb])
    assert out.shape == (4, 3)
    assert torch.allclose(out[[0, 2]], logits_a, atol=1e-6)
    assert torch.allclose(out[[1, 3], :2], logits_b, atol=1e-6)
    assert torch.isinf(out[[1, 3], 2]).all() and out[[1, 3]].argmax(-1).lt(2).all()


def test_a_row_with_missing_head_tensors_is_refused():
    head = _bert(3).classifier
    with pytest.raises(AdapterMismatchError, match="row 0"):
        per_row_apply(head, torch.randn(1, 32), [{"weight": torch.randn(3, 32)}])
