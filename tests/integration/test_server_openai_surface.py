"""The OpenAI surface eval harnesses and agent frameworks use, through the official `openai` client
against the real server: logprobs, echo and scoring, n / best_of with seeds, logit_bias, tool calls
(constrained, streamed, and a tool-result round trip). That the numbers are right is checked
against plain torch in tests/unit/serve/test_serve_logprobs.py; here, that every shape parses and
the streamed answers equal the whole ones."""

import json
import sys
from pathlib import Path

import jsonschema
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import random_adapter  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

from loraops.lora import save_adapter  # noqa: E402

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("surface")
    model = tiny_llama(0)
    model.config.max_position_embeddings = 1024          # room for the tools' preamble (~1 token per character)
    model.save_pretrained(d / "tiny", safe_serialization=True)
    tiny_tokenizer().save_pretrained(d / "tiny")
    ads = {n: str(save_adapter(random_adapter(model, r, t, seed=i), d / n))
           for i, (n, r, t) in enumerate([("a", 4, ["q_proj", "v_proj"]), ("b", 8, "all-linear")])}
    server = Server(["--base", str(d / "tiny"), "--insecure-no-auth", "--adapter", f"a={ads['a']}",
                     "--adapter", f"b={ads['b']}", "--max-tokens-cap", "160", "--max-choices", "4"], d / "server.log")
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    log = server.log()
    server.stop()
    assert "Traceback" not in log, log[-4000:]


def test_completion_logprobs_echo_and_scoring(client):
    prompt = "Invoice total"
    kw = dict(model="a", prompt=prompt, max_tokens=6, temperature=0, logprobs=3, echo=True)
    whole = client.completions.create(**kw)
    c, usage = whole.choices[0], whole.usage
    lp = c.logprobs
    assert c.text.startswith(prompt) and len(lp.tokens) == usage.prompt_tokens + usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    for token, top in zip(lp.tokens[1:], lp.top_logprobs[1:]):
        assert token in top and len(top) <= 4                        # the 3 most likely and the token
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert lp.text_offset[usage.prompt_tokens] == len(prompt)        # generated tokens start after the echo

    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == c.text
    streamed = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.tokens]
    assert streamed == lp.tokens

    scored = client.completions.create(model="a", prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    s = scored.choices[0]
    assert s.text == prompt and s.finish_reason == "length" and scored.usage.completion_tokens == 0
    assert s.logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:usage.prompt_tokens], abs=1e-5)


def test_n_with_a_seed_is_reproducible_and_best_of_returns_the_n_best(client):
    kw = dict(model="b", prompt="Hello", max_tokens=8, temperature=1.0, seed=7, n=3)
    first, again = client.completions.create(**kw), client.completions.create(**kw)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and texts == [c.text for c in again.choices]
    assert len(set(texts)) > 1                                       # each choice its own seed
    four = client.completions.create(**{**kw, "n": 4}, logprobs=0)       # the same four candidates, seen
    assert [c.text for c in four.choices[:3]] == texts
    mean = {c.text: sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs) for c in four.choices}
    best = client.completions.create(**{**kw, "n": 2}, best_of=4)
    assert len(best.choices) == 2 and best.usage.completion_tokens == 4 * 8    # all four generated
    assert [c.text for c in best.choices] == sorted(mean, key=lambda t: -mean[t])[:2]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="b", prompt="Hello", n=5)
    assert e.value.body["param"] == "n"

    chat = list(client.chat.completions.create(model="b", messages=ASK, max_tokens=5, n=2, seed=3, stream=True))
    finished = sorted(ch.choices[0].index for ch in chat if ch.choices and ch.choices[0].finish_reason)
    assert finished == [0, 1]


def test_chat_logprobs_whole_and_streamed(client):
    kw = dict(model="a", messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kw)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.bytes is None or all(0 <= b < 256 for b in e.bytes)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.content]
    assert [(x.token, round(x.logprob, 5)) for x in streamed] == [(x.token, round(x.logprob, 5)) for x in content]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole.choices[0].message.content


def test_logit_bias_forces_a_token(client):
    x = tiny_tokenizer()("x", add_special_tokens=False)["input_ids"][0]
    r = client.completions.create(model="a", prompt="Hello", max_tokens=5, temperature=0.8, seed=1,
                                  logit_bias={str(x): 100})
    assert r.choices[0].text == "x" * 5


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_required_and_named_tool_calls_parse_and_validate_whole_and_streamed(client, choice):
    kw = dict(model="a", messages=ASK, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False, max_tokens=120,
              temperature=0)
    whole = client.chat.completions.create(**kw)
    c = whole.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)

    name, args, ids = None, "", set()
    for ch in client.chat.completions.create(**kw, stream=True):
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            assert tc.index == 0
            ids |= {tc.id} - {None}
            name = tc.function.name or name
            args += tc.function.arguments or ""
    assert (name, args, len(ids)) == ("get_weather", call.function.arguments, 1)


def test_a_tool_result_round_trip(client):
    first = client.chat.completions.create(model="a", messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=120, temperature=0)
    msg = first.choices[0].message
    call = msg.tool_calls[0]
    follow = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    reply = client.chat.completions.create(model="a", messages=follow, tools=TOOLS, tool_choice="none",
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.choices[0].message.tool_calls is None
    assert isinstance(reply.choices[0].message.content, str)
    # the call and its result are in the prompt (as the model's turn and a <tool_response> user turn)
    grown = reply.usage.prompt_tokens - first.usage.prompt_tokens
    assert grown >= len(call.function.arguments) + len("sunny, 21 C")
    auto = client.chat.completions.create(model="a", messages=follow, tools=TOOLS, max_tokens=8, temperature=0)
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
