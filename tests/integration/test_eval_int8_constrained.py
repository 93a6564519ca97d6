"""evaluate() with the base in int8 and with constrained decoding: each is recorded in the report's
`comparable`, int8 scores stay close to fp32, constrained answers all parse."""

import json

import pytest
import torch

from loraops.errors import ConfigError
from loraops.evals import EvalConfig, evaluate
from loraops.lora import LoRAConfig, extract, inject, save_adapter
from loraops.models import fingerprint_dir
from tiny import save_tiny, tiny_llama

FAST = {"max_examples": 4, "batch_size": 4, "general_passages": 2, "questions_per_kind": 1}
SCHEMA = {"type": "object", "properties": {"vendor": {"type": "string", "maxLength": 12},
                                           "currency": {"enum": ["EUR", "USD"]}},
          "required": ["vendor", "currency"], "additionalProperties": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-options")
    base = save_tiny(root / "base", "llama")
    model = tiny_llama()
    config = LoRAConfig(r=4, target_modules="all-linear", init="random")
    inject(model, config)
    adapter = save_adapter(extract(model, config, {"base_fingerprint": fingerprint_dir(base), "base_name": "base"}),
                           root / "adapter")
    data = root / "data"
    data.mkdir()
    records = [{"prompt": f"Invoice INV-{i} from Acme GmbH, total {i},000.50 EUR.\nJSON:",
                "completion": json.dumps({"vendor": "Acme GmbH", "currency": "EUR"})} for i in range(1, 7)]
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine
    yield str(base), adapter, data
    torch.set_num_threads(threads)


def test_int8_evaluation_is_recorded_and_scores_close_to_fp32(setup):
    base, adapter, data = setup
    fp32 = evaluate(base, adapter, EvalConfig(data=data, max_new_tokens=6, **FAST))
    int8 = evaluate(base, adapter, EvalConfig(data=data, max_new_tokens=6, quantize="int8", **FAST))
    assert int8.comparable["quantize"] == "int8" and "quantize" not in fp32.comparable
    assert int8.general.ppl_adapted == pytest.approx(fp32.general.ppl_adapted, rel=0.05)
    assert int8.general.ppl_base == pytest.approx(fp32.general.ppl_base, rel=0.05)
    assert int8.domain_adapted.examples == fp32.domain_adapted.examples == 4


def test_constrained_evaluation_parses_every_answer_of_base_and_adapter(setup):
    pytest.importorskip("llguidance")
    base, adapter, data = setup
    free = evaluate(base, adapter, EvalConfig(data=data, max_new_tokens=48, **FAST))
    report = evaluate(base, adapter, EvalConfig(data=data, max_new_tokens=48, json_schema=SCHEMA, **FAST))
    assert free.domain_adapted.parse_failures > 0  # a random adapter writes no JSON by itself
    assert report.domain_base.parse_failures == report.domain_adapted.parse_failures == 0
    assert report.comparable["json_schema"].startswith("sha256:") and "json_schema" not in free.comparable
    for sample in report.samples:
        assert set(json.loads(sample["adapted"])) == {"vendor", "currency"}


def test_unknown_quantization_is_a_config_error():
    with pytest.raises(ConfigError, match="quantize"):
        EvalConfig(quantize="int4")
