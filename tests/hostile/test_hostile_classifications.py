"""Hostile requests to POST /v1/classifications on a real encoder server (a tiny BERT): each bad
body is one clean 400 naming its field, another tenant's adapter answers exactly like an unknown
one, an adapter whose weights overflow fails only its own requests, the generation routes are
refused by name, and the server stays healthy (the same answer to the same request afterwards).
On the session's causal-LM server the route is refused the same way."""

import concurrent.futures as cf
import sys
from pathlib import Path

import pytest
from hostile import assert_openai_error, post
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import save_classifiers  # noqa: E402
from tiny import save_tiny_encoder  # noqa: E402

from loraops.models import load_encoder_base  # noqa: E402
from loraops.serve.errors import BadRequestError  # noqa: E402
from loraops.serve.protocol import MAX_INPUTS, parse_classification  # noqa: E402

ACME, BETA = "sk-acme-cls-hostile-01", "sk-beta-cls-hostile-02"
ROUTE, MAX_CHARS = "/v1/classifications", 2000
PROBE = {"model": "sentiment", "input": ["great good happy", "awful"]}
TENANTS = f"""
[tenants.acme]
api_keys = ["{ACME}"]
adapters = ["sentiment", "overflow"]

[tenants.beta]
api_keys = ["{BETA}"]
adapters = ["spam"]
"""


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-classify")
    enc = save_tiny_encoder(d / "enc")
    dirs = save_classifiers(load_encoder_base(str(enc)).model, d)
    (d / "tenants.toml").write_text(TENANTS)
    server = Server(["--base", str(enc), "--tenants", str(d / "tenants.toml"), "--max-slots", "3", "--max-rank", "8",
                     "--max-batch", "8", "--max-prompt-chars", str(MAX_CHARS),
                     *[f"--adapter={n}={p}" for n, p in dirs.items()]], d / "server.log")
    e = {"server": server, "url": server.url}
    e["probe"] = post(e, ROUTE, PROBE, key=ACME).json()["data"]
    yield e
    log = server.log()
    server.stop()
    assert "Traceback" not in log, log[-4000:]


def assert_healthy(e) -> None:
    r = post(e, ROUTE, PROBE, key=ACME)
    assert r.status_code == 200 and r.json()["data"] == e["probe"], r.text


# body -> (status, code, param): each once a 500, an exception, or an answer to a question not asked.
BODIES = {
    "no-input": ({"model": "sentiment"}, 400, "invalid_value", "input"),
    "input-number": ({"model": "sentiment", "input": 5}, 400, "invalid_value", "input"),
    "input-empty-list": ({"model": "sentiment", "input": []}, 400, "invalid_value", "input"),
    "input-token-ids": ({"model": "sentiment", "input": [1, 2]}, 400, "invalid_value", "input[0]"),
    "input-nested": ({"model": "sentiment", "input": ["x", ["y"]]}, 400, "invalid_value", "input[1]"),
    "input-empty-string": ({"model": "sentiment", "input": ""}, 400, "invalid_value", "input[0]"),
    "input-null-in-list": ({"model": "sentiment", "input": ["x", None]}, 400, "invalid_value", "input[1]"),
    "too-many-inputs": ({"model": "sentiment", "input": ["x"] * 257}, 400, "invalid_value", "input"),
    "too-many-chars": ({"model": "sentiment", "input": ["x" * 1500, "y" * 1500]}, 400, "invalid_value", "input"),
    "too-many-tokens": ({"model": "sentiment", "input": ["ok", "great " * 300]}, 400, "context_length_exceeded",
                        "input[1]"),
    "no-model": ({"input": "x"}, 400, "invalid_value", "model"),
    "model-number": ({"model": 7, "input": "x"}, 400, "invalid_value", "model"),
    "composition": ({"model": "sentiment:0.5+overflow:0.5", "input": "x"}, 400, "invalid_value", "model"),
    "model-newline": ({"model": "sentiment\n", "input": "x"}, 400, "invalid_value", "model"),
}


@pytest.mark.parametrize("case", BODIES, ids=list(BODIES))
def test_a_hostile_body_is_one_clean_error(encoder, case):
    body, status, code, param = BODIES[case]
    assert_openai_error(post(encoder, ROUTE, body, key=ACME), status, code, param)
    assert_healthy(encoder)


def test_raw_bodies_are_clean_400s(encoder):
    for raw, param in [(b'{"model": "sentiment", "input": "ab\\ud800"}', "input"),
                       (b'{"model": "sentiment", "input": NaN}', None), (b'["sentiment"]', None)]:
        err = assert_openai_error(post(encoder, ROUTE, raw=raw, key=ACME), 400, "invalid_value")
        assert param is None or err["param"].startswith(param)
    assert_healthy(encoder)


def test_another_tenants_adapter_answers_like_an_unknown_one(encoder):
    theirs = assert_openai_error(post(encoder, ROUTE, {"model": "spam", "input": "x"}, key=ACME), 404,
                                 "model_not_found", "model")
    unknown = assert_openai_error(post(encoder, ROUTE, {"model": "nope", "input": "x"}, key=ACME), 404,
                                  "model_not_found", "model")
    assert theirs["message"].replace("spam", "?") == unknown["message"].replace("nope", "?")
    assert_openai_error(post(encoder, ROUTE, {"model": "spam@3", "input": "x"}, key=ACME), 404, "model_not_found")
    assert_openai_error(post(encoder, ROUTE, {"model": "enc", "input": "x"}, key=ACME), 404, "model_not_found")
    assert_openai_error(post(encoder, ROUTE, {"model": "spam", "input": "x"}, key="sk-none-000000"), 401)


def test_an_overflowing_adapter_fails_only_its_own_requests(encoder):
    solo = post(encoder, ROUTE, {"model": "spam", "input": PROBE["input"]}, key=BETA).json()["data"]
    with cf.ThreadPoolExecutor(6) as pool:
        bad = [pool.submit(post, encoder, ROUTE, {"model": "overflow", "input": PROBE["input"]}, ACME)
               for _ in range(2)]
        good = [pool.submit(post, encoder, ROUTE, {"model": "spam", "input": PROBE["input"]}, BETA)
                for _ in range(4)]
        bad, good = [f.result() for f in bad], [f.result() for f in good]
    for r in bad:
        assert assert_openai_error(r, 500, "non_finite_output")["type"] == "server_error"
    for r in good:
        assert r.status_code == 200, r.text
        for row, alone in zip(r.json()["data"], solo):
            assert row["label"] == alone["label"]
            assert max(abs(row["scores"][k] - alone["scores"][k]) for k in row["scores"]) <= 1e-5
    assert_healthy(encoder)


def test_generation_routes_on_an_encoder_are_refused_by_name(encoder):
    for path, body in [("/v1/completions", {"model": "sentiment", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]})]:
        err = assert_openai_error(post(encoder, path, body, key=ACME), 400, "unsupported_task")
        assert "/v1/classifications" in err["message"]
    assert_healthy(encoder)


def test_classifications_on_a_causal_lm_server_are_refused_by_name(env):
    err = assert_openai_error(post(env, ROUTE, {"model": "acme-a", "input": "x"}), 400, "unsupported_task")
    assert "/v1/completions" in err["message"]


texts = st.text(max_size=8) | st.sampled_from(["\ud800", "", "x" * 3000])
values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | texts,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={"model": st.sampled_from(["m", "a:0.5+b:0.5"]) | values,
                                           "input": texts | st.lists(texts, max_size=4) | values}))
def test_the_classification_parser_raises_only_bad_request(body):
    try:
        req = parse_classification(body, max_chars=MAX_CHARS)
    except BadRequestError as e:
        assert e.message and e.status == 400
        return
    assert isinstance(req.model, str) and req.model and 1 <= len(req.inputs) <= MAX_INPUTS
    assert all(isinstance(t, str) and t for t in req.inputs) and sum(map(len, req.inputs)) <= MAX_CHARS
