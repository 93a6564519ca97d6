from collections import Counter

import pytest
import torch

from loraops.errors import ConfigError
from loraops.evals.classify import score_classification
from loraops.train import TrainConfig
from loraops.train.classify import class_weights


@pytest.mark.parametrize("kw, match", [({"task": "seq2seq"}, "task must be one of"),
                                       ({"class_weights": "balanced"}, "--task classification"),
                                       ({"task": "diffusion", "quantize": "int8"}, "lm task only"),
                                       ({"task": "classification", "precision": "bf16"}, "lm task only")])
def test_options_that_do_not_fit_the_task_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(base="b", data="d", out="o", **kw)


def test_default_targets_follow_the_task():
    assert TrainConfig(base="b", data="d", out="o").targets == "all-linear"
    assert TrainConfig(base="b", data="d", out="o", task="diffusion").targets == "to_q,to_k,to_v,to_out.0"


def test_class_weights_balanced_and_explicit():
    counts = Counter({"a": 6, "b": 2})
    assert torch.allclose(class_weights("balanced", ["a", "b"], counts), torch.tensor([8 / 12, 8 / 4]))
    assert class_weights("b=3", ["a", "b"], counts).tolist() == [1.0, 3.0]
    for bad in ("c=2", "a=0", "a=x"):
        with pytest.raises(ConfigError, match="class-weights"):
            class_weights(bad, ["a", "b"], counts)


def test_accuracy_macro_f1_and_confusion_on_a_hand_case():
    # expected: a a a b b c; predicted: a a b b b a
    s = score_classification([0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 2], ["a", "b", "c"])
    assert s.confusion == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert s.accuracy == pytest.approx(4 / 6)
    f1 = {"a": 2 * 2 / (2 * 2 + 1 + 1), "b": 2 * 2 / (2 * 2 + 1 + 0), "c": 0.0}
    assert s.per_class_f1 == pytest.approx(f1) and s.macro_f1 == pytest.approx(sum(f1.values()) / 3)
