"""`loraops eval` as a user runs it: a report on stdout, stored beside the adapter or on the registry
version, and one-line errors for bad input."""

import json

import pytest
from rich.console import Console

from cli import assert_one_line_error, run_cli
from loraops.evals import EvalConfig, evaluate
from loraops.evals.table import summary_table
from loraops.lora import LoRAConfig, extract, inject, save_adapter
from loraops.models import fingerprint_dir
from tiny import save_tiny, tiny_llama

FAST = ["--max-examples", "4", "--max-new-tokens", "6", "--no-progress"]
# Tiny models gain nothing from a second thread, and on a loaded 2-core machine it costs them 5x.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-cli")
    base = save_tiny(root / "base", "llama")
    model = tiny_llama()
    config = LoRAConfig(r=4, target_modules="all-linear", init="random")
    inject(model, config)
    meta = {"base_fingerprint": fingerprint_dir(base), "base_name": "base"}
    adapter = save_adapter(extract(model, config, meta), root / "adapter")
    data = root / "data"
    data.mkdir()
    records = [{"prompt": f"Invoice INV-{i} from Acme GmbH, total {i},000.50 EUR.\nJSON:",
                "completion": json.dumps({"vendor": "Acme GmbH", "total": i * 1000 + 0.5})} for i in range(1, 7)]
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return base, adapter, data


def test_eval_prints_a_json_report_and_stores_it_beside_the_adapter(setup):
    base, adapter, data = setup
    result = run_cli("eval", "--base", base, "--adapter", adapter, "--data", data, "--json", *FAST, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["primary_metric"] == "field_accuracy"
    assert report["domain_adapted"]["examples"] == 4
    assert report["comparable"]["max_new_tokens"] == 6
    assert report["general"]["ppl_base"] > 1 and report["general"]["kl_mean"] > 0
    assert report["forgetting"]["score"] >= 0
    assert json.loads((adapter / "eval.json").read_text()) == report


def test_evaluation_is_deterministic_and_the_table_shows_gain_beside_forgetting(setup):
    base, adapter, data = setup
    config = EvalConfig(data=data, max_examples=3, max_new_tokens=5, batch_size=2, general_passages=4)
    first, second = evaluate(str(base), adapter, config), evaluate(str(base), adapter, config)
    assert first.to_dict() == second.to_dict()
    console = Console(record=True, width=140)
    console.print(summary_table(first))
    text = console.export_text()
    assert "JSON field accuracy *" in text and "perplexity" in text and "KL(base ‖ adapted)" in text
    assert "domain gain (field_accuracy, *)" in text and "forgetting" in text


def test_registry_versions_are_evaluated_and_the_report_is_recorded_on_them(setup):
    pytest.importorskip("sqlalchemy")
    from loraops.registry import Registry

    base, adapter, data = setup
    with Registry() as reg:
        reg.push(adapter, "acme-invoices", register_base=True)
    result = run_cli("eval", "--base", base, "--adapter", "acme-invoices@1", "--data", data, *FAST, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "stored in registry acme-invoices@1" in result.stdout
    with Registry() as reg:
        stored = reg.resolve("acme-invoices@1").eval_results
    assert stored["adapter"] == "acme-invoices@1" and stored["domain_adapted"]["examples"] == 4


def test_missing_data_is_a_one_line_error(setup, tmp_path):
    base, adapter, _ = setup
    result = run_cli("eval", "--base", base, "--adapter", adapter, "--data", tmp_path, *FAST, env=ONE_THREAD)
    assert_one_line_error(result, "no val.jsonl")


def test_unparseable_val_file_is_a_one_line_error_naming_the_line(setup, tmp_path):
    base, adapter, _ = setup
    (tmp_path / "val.jsonl").write_text('{"prompt": "p", "completion": "c"}\n{"prompt": \n')
    result = run_cli("eval", "--base", base, "--adapter", adapter, "--data", tmp_path, *FAST, env=ONE_THREAD)
    assert_one_line_error(result, "val.jsonl line 2", "bad JSON")


def test_an_adapter_from_another_base_is_a_one_line_error(setup, tmp_path):
    _, adapter, data = setup
    other = save_tiny(tmp_path / "other", "llama", seed=1)
    result = run_cli("eval", "--base", other, "--adapter", adapter, "--data", data, *FAST, env=ONE_THREAD)
    assert_one_line_error(result, "--force")
