import json

import pytest

from loraops.errors import DataFormatError, EvalDataError
from loraops.evals.domain import auto_max_new_tokens, load_examples
from tiny import tiny_tokenizer


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_curated_directory_is_read_through_its_val_file(tmp_path):
    write(tmp_path / "val.jsonl", [{"prompt": "p1", "completion": " c1"}, {"text": "skipped"},
                                   {"prompt": "p2", "completion": "c2"}])
    examples = load_examples(tmp_path, tiny_tokenizer())
    assert [(e.prompt, e.reference) for e in examples] == [("p1", "c1"), ("p2", "c2")]


def test_max_examples_takes_the_first_examples_in_file_order(tmp_path):
    f = write(tmp_path / "v.jsonl", [{"prompt": f"p{i}", "completion": "c"} for i in range(5)])
    assert [e.prompt for e in load_examples(f, None, max_examples=2)] == ["p0", "p1"]


def test_chat_lines_are_rendered_with_the_chat_template_and_lose_its_tokens(tmp_path):
    f = write(tmp_path / "v.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": '{"a": 1}'}]}])
    (example,) = load_examples(f, tiny_tokenizer())
    assert example.prompt.endswith("<start_of_turn>model\n")
    assert example.reference == '{"a": 1}'


def test_missing_data_is_refused(tmp_path):
    with pytest.raises(EvalDataError, match="no val.jsonl"):
        load_examples(tmp_path, None)
    with pytest.raises(EvalDataError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl", None)


def test_a_malformed_line_is_refused_with_its_file_and_line(tmp_path):
    f = write(tmp_path / "v.jsonl", [{"prompt": "p", "completion": "c"}, "{not json"])
    with pytest.raises(DataFormatError, match=r"v.jsonl line 2: bad JSON"):
        load_examples(f, None)


def test_a_file_without_prompts_is_refused(tmp_path):
    f = write(tmp_path / "v.jsonl", [{"text": "only text"}])
    with pytest.raises(EvalDataError, match="no prompt/completion"):
        load_examples(f, None)


def test_generation_length_follows_the_longest_reference(tmp_path):
    tok = tiny_tokenizer()
    f = write(tmp_path / "v.jsonl", [{"prompt": "p", "completion": "abc"},
                                     {"prompt": "p", "completion": "a" * 40}])
    examples = load_examples(f, tok)
    longest = len(tok("a" * 40, add_special_tokens=False)["input_ids"])
    assert auto_max_new_tokens(examples, tok) == longest + 8
    assert auto_max_new_tokens(examples, tok, cap=5) == 5


def test_a_file_the_adapter_was_trained_on_is_evaluated_only_on_the_trainers_val_split(tmp_path):
    from loraops.evals.domain import trainer_split
    from loraops.train.batches import load_dataset

    f = write(tmp_path / "all.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(20)])
    meta = {"hyperparameters": {"data": str(f), "val_fraction": 0.2, "seed": 3}}
    split = trainer_split(f, meta)
    assert split == (0.2, 3)
    held_out = [r["prompt"] for r in load_dataset(f, 0.2, 3).val]
    assert [e.prompt for e in load_examples(f, None, split=split)] == held_out and len(held_out) == 4
    other = {"hyperparameters": {"data": str(tmp_path / "other.jsonl"), "val_fraction": 0.2}}
    assert trainer_split(f, other) is None
    assert trainer_split(tmp_path, meta) is None  # a curated dir brings its own val.jsonl
