"""The demo's data as `make demo` curates it with the real Gemma tokenizer (slow: needs the converted
base): at least 60 validation examples per task, and curation drops the planted duplicates, not
accidental ones."""

import json

import pytest
from transformers import AutoTokenizer

from loraops.data import CurateOptions, curate
from loraops.demo import tasks
from loraops.demo.run import TENANTS, DemoOptions
from loraops.models import DEFAULT_BASE, resolve_base

pytestmark = pytest.mark.slow


def _curate(records, path, tokenizer):
    raw = path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return curate(raw, path / "out", CurateOptions(val_fraction=DemoOptions(path).val_fraction), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BASE).path)


@pytest.mark.parametrize("tenant", TENANTS, ids=lambda t: t.task)
def test_each_task_keeps_at_least_60_validation_examples(tenant, tokenizer, tmp_path):
    report = _curate(tasks.generate(tenant.task, tenant.examples), tmp_path, tokenizer)
    assert report.val >= 60
    assert report.dropped["exact_duplicate"] + report.dropped["near_duplicate"] >= 0.05 * tenant.examples


@pytest.mark.parametrize("tenant", TENANTS, ids=lambda t: t.task)
def test_without_planted_copies_curation_finds_almost_no_duplicates(tenant, tokenizer, tmp_path):
    report = _curate(tasks.generate(tenant.task, tenant.examples, duplicate_rate=0), tmp_path, tokenizer)
    assert report.dropped["exact_duplicate"] + report.dropped["near_duplicate"] <= 0.02 * tenant.examples
