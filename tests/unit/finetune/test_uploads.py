"""Checking an upload: every bad line is named by its number, chat lines must fit the template."""

import json

import pytest

from loraops.finetune.errors import InvalidFileError
from loraops.finetune.uploads import MAX_ERRORS, check_training_file
from tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_every_supported_shape_is_accepted_and_its_tokens_counted(tok, tmp_path):
    lines = [{"prompt": "Total?", "completion": " 12 EUR"}, {"text": "plain text"}, "",
             {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    check = check_training_file(write(tmp_path / "ok.jsonl", lines), tok)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                   tokenize=False)
    expected = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in ["Total? 12 EUR", "plain text", chat])
    assert (check.records, check.tokens) == (3, expected)


def test_bad_lines_are_reported_with_their_numbers(tok, tmp_path):
    lines = [{"text": "fine"}, "not json", {"prompt": 1, "completion": "x"},
             {"messages": [{"role": "user", "content": "no answer"}]}, {"other": "field"}]
    with pytest.raises(InvalidFileError) as e:
        check_training_file(write(tmp_path / "bad.jsonl", lines), tok)
    msg = e.value.message
    for n, reason in [(2, "bad JSON"), (3, 'field "prompt" must be a string'),
                      (4, "the last message must be from the assistant"), (5, 'no "messages"')]:
        assert f"line {n}: {reason}" in msg, msg
    assert "line 1" not in msg and e.value.param == "file"


def test_only_the_first_errors_are_listed(tok, tmp_path):
    with pytest.raises(InvalidFileError, match="first 5") as e:
        check_training_file(write(tmp_path / "bad.jsonl", ["{"] * 20), tok)
    assert e.value.message.count("line ") == MAX_ERRORS


def test_a_file_without_records_is_refused(tok, tmp_path):
    with pytest.raises(InvalidFileError, match="no records"):
        check_training_file(write(tmp_path / "empty.jsonl", ["", "  "]), tok)
