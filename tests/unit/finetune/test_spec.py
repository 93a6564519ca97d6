"""The job request: OpenAI's fields and ours, "auto" resolved, every mistake a 400 naming its field."""

import pytest

from loraops.finetune.spec import AUTO, BASE_LR, Options, parse_job_request
from loraops.serve.errors import BadRequestError

BODY = {"model": "tiny", "training_file": "file-abc"}


def test_auto_hyperparameters_resolve_to_fixed_values_and_a_seed_is_drawn():
    req = parse_job_request(BODY)
    assert req.hyperparameters == AUTO and req.options == Options()
    assert req.learning_rate == BASE_LR and 0 <= req.seed < 2**31


def test_method_supervised_and_the_loraops_extension_are_read():
    req = parse_job_request({**BODY, "seed": 7, "suffix": "tickets", "metadata": {"team": "ml"},
                             "method": {"type": "supervised", "supervised": {"hyperparameters": {
                                 "n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": 0.5}}},
                             "loraops": {"rank": 16, "targets": "all-linear", "auto_promote": True}})
    assert req.hyperparameters == {"n_epochs": 4, "batch_size": AUTO["batch_size"], "learning_rate_multiplier": 0.5}
    assert req.learning_rate == pytest.approx(BASE_LR / 2)
    assert (req.seed, req.suffix, req.metadata) == (7, "tickets", {"team": "ml"})
    assert req.options == Options(rank=16, targets="all-linear", auto_promote=True)


@pytest.mark.parametrize("change, param", [
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 2.5}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"learning_rate": 0.1}}, "hyperparameters.learning_rate"),
    ({"method": {"type": "dpo"}}, "method.type"),
    ({"method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 1}}, "hyperparameters"),
    ({"model": ""}, "model"),
    ({"training_file": None}, "training_file"),
    ({"suffix": "Not A Suffix"}, "suffix"),
    ({"seed": -1}, "seed"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"integrations": [{"type": "wandb"}]}, "integrations"),
    ({"loraops": {"rank": 0}}, "loraops.rank"),
    ({"loraops": {"auto_promote": "yes"}}, "loraops.auto_promote"),
    ({"loraops": {"epochs": 3}}, "loraops.epochs"),
    ({"n_epochs": 3}, "n_epochs"),
])
def test_bad_fields_are_refused_naming_the_field(change, param):
    with pytest.raises(BadRequestError) as e:
        parse_job_request({**BODY, **change})
    assert e.value.param == param, e.value.message
