import json

from cli import assert_one_line_error, run_cli
from conftest import read_jsonl
from tiny import tiny_tokenizer

PAIR = {"prompt": "Capital of France?", "completion": "Paris"}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_curate_writes_outputs_prints_a_summary_and_records_its_options(write_jsonl, tmp_path):
    path = write_jsonl([PAIR, PAIR, {"text": "reach me at a@example.com"}])
    result = run_cli("data", "curate", path, "--out", tmp_path / "out", "--no-near-dedup", "--no-pii",
                     "--val-fraction", "0.5", "--seed", "3", "--near-dup-threshold", "0.9")
    assert result.returncode == 0, result.stderr
    assert "exact_duplicate" in result.stdout and "kept" in result.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"train.jsonl", "val.jsonl", "report.json"}
    options = json.loads((tmp_path / "out" / "report.json").read_text())["options"]
    assert options | {"near_dedup": False, "pii": False, "val_fraction": 0.5, "seed": 3,
                      "near_dup_threshold": 0.9} == options


def test_strict_bad_line_is_a_one_line_error_naming_the_line(write_jsonl, tmp_path):
    path = write_jsonl([PAIR, "{not json"])
    result = run_cli("data", "curate", path, "--out", tmp_path / "out", "--strict")
    assert_one_line_error(result, "line 2", "bad JSON")
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_chat_data_without_base_is_a_one_line_error(write_jsonl, tmp_path):
    result = run_cli("data", "curate", write_jsonl([CHAT]), "--out", tmp_path / "out")
    assert_one_line_error(result, "chat", "--base")


def test_chat_data_is_rendered_with_the_base_directory_tokenizer(write_jsonl, tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    result = run_cli("data", "curate", write_jsonl([CHAT]), "--out", tmp_path / "out",
                     "--base", tmp_path / "base", "--val-fraction", "0")
    assert result.returncode == 0, result.stderr
    assert read_jsonl(tmp_path / "out" / "train.jsonl") == [
        {"prompt": "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
         "completion": "hello<end_of_turn>\n"}]


def test_bad_option_value_is_a_one_line_error(write_jsonl, tmp_path):
    assert_one_line_error(run_cli("data", "curate", write_jsonl([PAIR]), "--out", tmp_path / "out",
                                  "--val-fraction", "1.5"), "val_fraction")
