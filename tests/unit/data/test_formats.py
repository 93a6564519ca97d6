import pytest
from tiny import tiny_tokenizer

from loraops.data.formats import Message, Record, parse_line, render_chat, to_output
from loraops.errors import ConfigError, DataFormatError


def test_prompt_completion_line_becomes_a_completion_record():
    record = parse_line(b'{"prompt": "Q", "completion": "A"}', 3)
    assert record == Record("completion", 3, completion="A", prompt="Q")


def test_text_line_becomes_a_text_record():
    assert parse_line(b'{"text": "hello"}', 1) == Record("text", 1, completion="hello")


def test_chat_line_keeps_history_and_last_assistant_turn():
    raw = (b'{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},'
           b' {"role": "assistant", "content": "A"}]}')
    assert parse_line(raw, 2) == Record("chat", 2, completion="A",
                                        history=(Message("system", "S"), Message("user", "U")))


@pytest.mark.parametrize("raw, reason", [
    (b'{"prompt": "Q"', "bad JSON"),
    (b'\xff\xfe{"text": "x"}', "not UTF-8"),
    (b'[1, 2]', "expected a JSON object"),
    (b'{"prompt": "Q"}', 'missing field "completion"'),
    (b'{"prompt": "Q", "completion": 5}', 'field "completion" must be a string'),
    (b'{"text": null}', 'field "text" must be a string'),
    (b'{"messages": []}', '"messages" is empty'),
    (b'{"messages": "hi"}', '"messages" must be a list'),
    (b'{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "unknown role"),
    (b'{"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}', 'missing field "content"'),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "last message must be from the assistant"),
    (b'{"messages": ["x"]}', "message 0 must be an object"),
    (b'{"input": "x"}', 'no "messages"'),
])
def test_malformed_line_names_line_and_reason(raw, reason):
    with pytest.raises(DataFormatError) as e:
        parse_line(raw, 7)
    assert e.value.line == 7 and reason in e.value.reason and str(e.value).startswith("line 7: ")


def test_chat_renders_prompt_with_generation_prompt_and_completion_with_end_of_turn():
    record = Record("chat", 1, completion="fine", history=(Message("user", "how are you?"),))
    prompt, completion = render_chat(tiny_tokenizer(), record)
    assert prompt == "<bos><start_of_turn>user\nhow are you?<end_of_turn>\n<start_of_turn>model\n"
    assert completion == "fine<end_of_turn>\n"


def test_chat_without_tokenizer_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match="--base"):
        to_output(Record("chat", 4, completion="A", history=(Message("user", "Q"),)))


def test_output_shapes_follow_the_record_kind():
    assert to_output(Record("text", 1, completion="t")) == {"text": "t"}
    pair = Record("completion", 1, completion="c", prompt="p")
    assert to_output(pair) == {"prompt": "p", "completion": "c"}
