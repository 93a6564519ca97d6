import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny import tiny_tokenizer

from loraops.data.tokenize import IGNORE, encode_example, pack

TOK = tiny_tokenizer()
BOS, EOS = TOK.bos_token_id, TOK.eos_token_id


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def test_prompt_tokens_are_masked_and_completion_tokens_are_labels():
    input_ids, labels = encode_example(TOK, {"prompt": "Total?", "completion": " 99.5"}, max_len=64)
    prompt, completion = [BOS, *ids("Total?")], [*ids(" 99.5"), EOS]
    assert input_ids == prompt + completion
    assert labels == [IGNORE] * len(prompt) + completion


def test_text_records_learn_every_token_but_bos():
    input_ids, labels = encode_example(TOK, {"text": "hello world"}, max_len=64)
    assert input_ids == [BOS, *ids("hello world"), EOS]
    assert labels == [IGNORE, *ids("hello world"), EOS]


def test_rendered_chat_prompt_keeps_its_own_bos_and_end_of_turn():
    prompt = "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    input_ids, labels = encode_example(TOK, {"prompt": prompt, "completion": "yo<end_of_turn>\n"}, max_len=64)
    assert input_ids.count(BOS) == 1 and input_ids[0] == BOS
    end_of_turn = TOK.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in [t for t, lab in zip(input_ids, labels) if lab != IGNORE]


def test_too_long_prompt_loses_its_left_side_and_keeps_bos_and_completion():
    prompt = " ".join(f"w{i}" for i in range(100))
    input_ids, labels = encode_example(TOK, {"prompt": prompt, "completion": " the answer"}, max_len=20)
    completion = [*ids(" the answer"), EOS]
    assert len(input_ids) == 20 and input_ids[0] == BOS
    assert input_ids[-len(completion):] == completion
    assert input_ids[1:-len(completion)] == ids(prompt)[-(20 - 1 - len(completion)):]
    assert labels[-len(completion):] == completion


def test_completion_longer_than_max_len_keeps_its_start():
    record = {"prompt": "Q", "completion": "a b c d e f g h i j k l"}
    input_ids, labels = encode_example(TOK, record, max_len=5)
    assert input_ids == ids("a b c d e f g h i j k l")[:5] == labels


def test_max_len_below_one_is_refused():
    with pytest.raises(ValueError):
        encode_example(TOK, {"text": "x"}, max_len=0)


def test_pack_resets_positions_and_numbers_sequences():
    rows = pack([([1, 2, 3], [IGNORE, 2, 3]), ([4, 5], [4, 5]), ([6, 7, 8, 9], [6, 7, 8, 9])], seq_len=6)
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert rows[0].position_ids == [0, 1, 2, 0, 1] and rows[1].position_ids == [0, 1, 2, 3]
    assert rows[0].seq_ids == [0, 0, 0, 1, 1] and rows[1].seq_ids == [0, 0, 0, 0]


def test_first_token_of_each_packed_example_predicts_nothing():
    rows = pack([([1, 2], [1, 2]), ([3, 4], [3, 4]), ([5, 6], [5, 6])], seq_len=8)
    assert rows[0].labels == [IGNORE, 2, IGNORE, 4, IGNORE, 6]


def test_every_token_lands_in_exactly_one_row():
    examples = [(list(range(n)), list(range(n))) for n in (5, 1, 7, 3, 8, 2)]
    rows = pack(examples, seq_len=8)
    assert all(len(r.input_ids) <= 8 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == sum(len(e[0]) for e in examples)


def test_example_longer_than_seq_len_is_refused():
    with pytest.raises(ValueError, match="seq_len"):
        pack([([1] * 9, [1] * 9)], seq_len=8)


@given(lengths=st.lists(st.integers(1, 8), max_size=30), seq_len=st.integers(8, 20))
def test_packing_preserves_tokens_and_restarts_positions_at_every_new_sequence(lengths, seq_len):
    examples = [(ids, ids) for ids in (list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths))]
    rows = pack(examples, seq_len)
    assert [t for r in rows for t in r.input_ids] == [t for ids, _ in examples for t in ids]
    for row in rows:
        starts = [i for i in range(len(row.input_ids)) if i == 0 or row.seq_ids[i] != row.seq_ids[i - 1]]
        assert starts == [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == IGNORE for i in starts)
