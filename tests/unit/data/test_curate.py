import hashlib
import json

import pytest
from conftest import read_jsonl
from tiny import tiny_tokenizer

from loraops.data import CurateOptions, curate
from loraops.demo.tasks import generate
from loraops.errors import ConfigError, DataFormatError

CHAT = {"messages": [{"role": "user", "content": "Route: card declined"},
                     {"role": "assistant", "content": '{"category": "billing"}'}]}
PAIR = {"prompt": "Capital of France?", "completion": "Paris"}
TEXT = {"text": "A plain document about invoices."}
ALL_TRAIN = CurateOptions(val_fraction=0.0)


def test_each_input_format_is_written_in_its_output_shape(write_jsonl, tmp_path):
    report = curate(write_jsonl([CHAT, PAIR, TEXT]), tmp_path / "out", ALL_TRAIN, tokenizer=tiny_tokenizer())
    assert read_jsonl(tmp_path / "out" / "train.jsonl") == [
        {"prompt": "<bos><start_of_turn>user\nRoute: card declined<end_of_turn>\n<start_of_turn>model\n",
         "completion": '{"category": "billing"}<end_of_turn>\n'},
        PAIR, TEXT]
    assert report.formats == {"chat": 1, "completion": 1, "text": 1} and report.kept == 3


def test_malformed_lines_are_skipped_and_reported_with_line_numbers(write_jsonl, tmp_path):
    lines = [PAIR, "{oops", b"\xff\xfe", {"prompt": "x"}, {"messages": []},
             {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, TEXT]
    report = curate(write_jsonl(lines), tmp_path / "out", ALL_TRAIN)
    assert report.dropped == {"malformed": 5} and report.kept == 2 and report.lines_in == 7
    assert [e["line"] for e in report.examples["malformed"]] == [2, 3, 4]
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["dropped"] == {"malformed": 5}
    assert "not UTF-8" in on_disk["examples"]["malformed"][1]["reason"]


def test_a_conversation_the_chat_template_refuses_is_a_malformed_line(write_jsonl, tmp_path):
    tokenizer = tiny_tokenizer()
    refuse_system = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
    tokenizer.chat_template = refuse_system + tokenizer.chat_template
    with_system = {"messages": [{"role": "system", "content": "Be brief."}, *CHAT["messages"]]}
    report = curate(write_jsonl([with_system, CHAT]), tmp_path / "out", ALL_TRAIN, tokenizer=tokenizer)
    assert report.dropped == {"malformed": 1} and report.kept == 1
    assert report.examples["malformed"][0]["line"] == 1
    assert "chat template refuses" in report.examples["malformed"][0]["reason"]


def test_strict_mode_fails_on_the_first_malformed_line_naming_it(write_jsonl, tmp_path):
    path = write_jsonl([PAIR, TEXT, {"prompt": 1, "completion": "x"}, "{oops"])
    with pytest.raises(DataFormatError, match=r"in.jsonl line 3: field \"prompt\" must be a string") as e:
        curate(path, tmp_path / "out", CurateOptions(strict=True))
    assert e.value.line == 3


def test_every_rule_is_counted_with_at_most_three_examples(write_jsonl, tmp_path):
    lines = [PAIR] * 5 + [{"prompt": "q", "completion": " "}, {"prompt": "same", "completion": "same"},
                          {"text": "spam " * 50}, {"text": "\x00\x01\x02\x03 ab"}, TEXT]
    report = curate(write_jsonl(lines), tmp_path / "out", ALL_TRAIN)
    assert report.dropped == {"exact_duplicate": 4, "empty_completion": 1, "prompt_equals_completion": 1,
                              "repetition": 1, "non_text": 1}
    assert [e["line"] for e in report.examples["exact_duplicate"]] == [2, 3, 4]
    assert report.kept == 2


def test_near_duplicates_are_dropped_naming_the_line_they_copy(write_jsonl, tmp_path):
    body = " ".join(f"word{i}" for i in range(80))
    path = write_jsonl([{"text": body}, {"text": body.replace("word40", "changed")}])
    report = curate(path, tmp_path / "out")
    assert report.dropped == {"near_duplicate": 1}
    example = report.examples["near_duplicate"][0]
    assert example["line"] == 2 and example["duplicate_of_line"] == 1
    assert example["completion"].endswith("…") and len(example["completion"]) == 201  # previews are short


def test_records_differing_only_in_pii_are_exact_duplicates(write_jsonl, tmp_path):
    lines = [{"text": "Mail me at a@example.com please"}, {"text": "Mail me at b@example.org please"}]
    report = curate(write_jsonl(lines), tmp_path / "out", ALL_TRAIN)
    assert report.dropped == {"exact_duplicate": 1} and report.pii == {"EMAIL": 1}
    assert read_jsonl(tmp_path / "out" / "train.jsonl") == [{"text": "Mail me at [EMAIL] please"}]


def test_switched_off_steps_keep_what_they_would_drop(write_jsonl, tmp_path):
    lines = [{"text": "Ｍail a@example.com"}] * 2 + [{"prompt": "q", "completion": "q"}]
    off = CurateOptions(normalize=False, pii=False, filter_quality=False, exact_dedup=False, near_dedup=False,
                        val_fraction=0.0)
    report = curate(write_jsonl(lines), tmp_path / "out", off)
    assert report.kept == 3 and not report.dropped and not report.pii
    assert read_jsonl(tmp_path / "out" / "train.jsonl")[0] == {"text": "Ｍail a@example.com"}


def test_split_is_deterministic_and_digests_match_the_files(write_jsonl, tmp_path):
    path = write_jsonl([{"text": f"document number {i} about topic {i * 7}"} for i in range(200)])
    options = CurateOptions(val_fraction=0.3, seed=5, near_dedup=False)
    first = curate(path, tmp_path / "a", options)
    second = curate(path, tmp_path / "b", options)
    assert first.output_sha256 == second.output_sha256
    assert (tmp_path / "a" / "val.jsonl").read_bytes() == (tmp_path / "b" / "val.jsonl").read_bytes()
    assert 30 < first.val < 90 and first.train + first.val == 200
    for name, digest in first.files.items():
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest() == digest
    assert first.input_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    reseeded = curate(path, tmp_path / "c", CurateOptions(val_fraction=0.3, seed=6, near_dedup=False))
    assert reseeded.output_sha256 != first.output_sha256


def test_failed_run_leaves_old_outputs_and_no_partial_files(write_jsonl, tmp_path):
    out = tmp_path / "out"
    curate(write_jsonl([PAIR]), out, ALL_TRAIN)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="tokenizer"):
        curate(write_jsonl([TEXT, PAIR, CHAT], name="chat.jsonl"), out, ALL_TRAIN)  # chat, no tokenizer
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_blank_lines_are_ignored(write_jsonl, tmp_path):
    report = curate(write_jsonl([PAIR, "", "   ", TEXT]), tmp_path / "out")
    assert report.lines_in == 2 and not report.dropped


def test_missing_input_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        curate(tmp_path / "nope.jsonl", tmp_path / "out")


def test_invalid_options_are_refused():
    with pytest.raises(ConfigError):
        CurateOptions(val_fraction=1.0)
    with pytest.raises(ConfigError):
        CurateOptions(near_dup_threshold=0.0)


def test_demo_invoices_come_out_scrubbed_and_deduplicated(write_jsonl, tmp_path):
    report = curate(write_jsonl(generate("invoices", 300)), tmp_path / "out", tokenizer=tiny_tokenizer())
    assert report.dropped["exact_duplicate"] > 0 and report.dropped["near_duplicate"] > 0
    assert report.pii["EMAIL"] > 0 and report.pii["IBAN"] > 0 and report.pii["PHONE"] > 0
    written = (tmp_path / "out" / "train.jsonl").read_text() + (tmp_path / "out" / "val.jsonl").read_text()
    assert "@" not in written and "+49" not in written
    assert report.train > 0 and report.val > 0
