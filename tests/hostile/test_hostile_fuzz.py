"""Property-based fuzzing (hypothesis, bounded so it runs in seconds): the request parsers, the
adapter readers and JSONL curation take anything and fail only with our typed errors."""

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loraops.errors import DataFormatError, LoraOpsError
from loraops.serve.errors import BadRequestError
from loraops.serve.protocol import parse_chat, parse_completion, parse_json

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values with the awkward corners drawn often: NaN/inf, huge and tiny numbers, lone surrogates.
surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udc80" * 3])
text = (st.text(st.characters(codec=None), max_size=12) | surrogates
        | st.sampled_from(["", "x" * 300, "hello", "q_proj"]))
numbers = (st.sampled_from([math.nan, math.inf, -math.inf, 5e-324, 1e-300, 1e-6, 0, 0.0, 1, 2, -1, 2**63, 10**40])
           | st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**30), max_value=10**30))
scalars = st.none() | st.booleans() | numbers | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(text, inner, max_size=4), max_leaves=12)
anything = numbers | json_values
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "x"]) | anything,
                                           "content": text | anything}), min_size=1, max_size=3) | anything
OPTIONAL = {name: anything for name in ["max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                                        "seed", "stream", "n", "logprobs", "logit_bias", "presence_penalty",
                                        "frequency_penalty", "best_of", "suffix", "echo", "tools"]}
OPTIONAL.update(stop=st.lists(text, max_size=5) | anything, stream_options=st.fixed_dictionaries(
    {"include_usage": anything}) | anything, response_format=st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema"]) | anything,
     "json_schema": st.fixed_dictionaries({"schema": json_values}) | anything}) | anything)
bodies = st.fixed_dictionaries({"model": st.sampled_from(["m", "a:0.5+b:0.5"]) | anything,
                                "prompt": text | st.lists(st.integers(-5, 10**6), max_size=4) | anything,
                                "messages": messages}, optional=OPTIONAL)


def _dumps(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


@FAST
@example({"model": "m", "prompt": "x", "temperature": math.nan, "messages": [{"role": "user", "content": "x"}]})
@example({"model": "m", "prompt": "x", "top_p": 5e-324, "messages": [{"role": "user", "content": "x"}]})
@example({"model": "m", "prompt": "x", "presence_penalty": 0.5, "messages": [{"role": "user", "content": "x"}]})
@given(bodies)
def test_request_parsers_raise_only_bad_request(body):
    for parse in (parse_completion, parse_chat):
        try:
            req = parse(body)
        except BadRequestError as e:
            assert e.message and e.status == 400
            continue
        p = req.params
        assert math.isfinite(p.temperature) and math.isfinite(p.top_p) and p.max_tokens >= 1
        assert p.temperature == 0 or p.temperature >= 1e-5


@FAST
@example(b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}")
@example(b'{"a": ' + b"9" * 5000 + b"}")
@example(b'{"a": "\\ud800"}')
@given(st.one_of(st.binary(max_size=200), bodies.map(_dumps), json_values.map(_dumps)))
def test_parse_json_raises_only_bad_request(raw):
    try:
        body = parse_json(raw)
    except BadRequestError:
        return
    assert isinstance(body, dict)
    json.dumps(body, allow_nan=False).encode("utf-8")       # strict JSON, all text: safe to hand on


# ---- adapter files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory):
    from lora_factory import random_adapter
    from tiny import tiny_llama

    from loraops.lora import save_adapter
    return save_adapter(random_adapter(tiny_llama(0), 2, ["q_proj"], seed=1, meta={"base_name": "tiny"}),
                        tmp_path_factory.mktemp("fuzz") / "good")


def _read_mutated(good: Path, mutate) -> None:
    from loraops.lora import read_adapter

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "a"
        shutil.copytree(good, d)
        mutate(d)
        try:
            adapter = read_adapter(d)
        except LoraOpsError:
            return
    for m in adapter.modules.values():                    # what loads is floating point and finite
        for t in (m.A, m.B):
            assert t.is_floating_point() and bool(t.isfinite().all()) and t.numel() > 0
        assert math.isfinite(m.scale) and m.scale > 0


DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "C64", "F8_E4M3", "I64", "XX", ""])
header_edits = st.fixed_dictionaries({}, optional={
    "dtype": DTYPES | json_values, "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3) | json_values})


@SLOW
@given(edits=header_edits, rename=st.none() | text, metadata=st.none() | json_values,
       cut=st.none() | st.integers(0, 400), flip=st.none() | st.tuples(st.integers(0, 400), st.integers(0, 255)))
def test_mutated_safetensors_headers_are_refused_cleanly(good_adapter, edits, rename, metadata, cut, flip):
    def mutate(d: Path):
        f = d / "adapter_model.safetensors"
        raw = f.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        key = next(k for k in header if k != "__metadata__")
        header[key].update(edits)
        if rename is not None:
            header[rename] = header.pop(key)
        if metadata is not None:
            header["__metadata__"] = metadata
        blob = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
        out = bytearray(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
        if flip is not None and flip[0] < len(out):
            out[flip[0]] = flip[1]
        f.write_bytes(bytes(out[:cut] if cut is not None else out))
    _read_mutated(good_adapter, mutate)


CONFIG_KEYS = ["r", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform", "layers_pattern",
               "use_rslora", "use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern",
               "peft_type", "bias", "init_lora_weights", "task_type", "base_model_name_or_path"]


patterns = st.dictionaries(st.sampled_from(["q_proj", "model.layers.0.self_attn.q_proj", "v_proj"]) | text,
                          anything, max_size=2)
config_values = {k: anything for k in CONFIG_KEYS}
config_values.update(rank_pattern=patterns | anything, alpha_pattern=patterns | anything,
                     target_modules=st.lists(text | anything, max_size=3) | anything)


@SLOW
@example(config={"alpha_pattern": {"q_proj": "x"}}, meta=None, garbage=None)
@example(config={"lora_alpha": math.inf}, meta=None, garbage=None)
@example(config={}, meta=[1], garbage=None)
@example(config={}, meta={"parents": "abc"}, garbage=None)
@example(config={}, meta={"parents": [{"name": "p", "version": "x"}]}, garbage=None)
@given(config=st.fixed_dictionaries({}, optional=config_values),
       meta=st.none() | json_values | st.dictionaries(st.sampled_from(
           ["parents", "base_fingerprint", "metrics", "hyperparameters", "dataset_digest"]), json_values, max_size=3),
       garbage=st.none() | st.binary(max_size=40))
def test_mutated_configs_and_metadata_are_refused_cleanly(good_adapter, config, meta, garbage):
    def mutate(d: Path):
        cfg = json.loads((d / "adapter_config.json").read_text())
        blob = json.dumps({**cfg, **config}, allow_nan=True).encode("utf-8", "surrogatepass")
        (d / "adapter_config.json").write_bytes(garbage if garbage is not None else blob)
        if meta is not None:
            (d / "loraops.json").write_bytes(json.dumps(meta, allow_nan=True).encode("utf-8", "surrogatepass"))
    _read_mutated(good_adapter, mutate)


# ---- JSONL curation -----------------------------------------------------------------------------

records = st.fixed_dictionaries({}, optional={"prompt": text | anything, "completion": text | anything,
                                              "text": text | anything, "messages": messages})


@FAST
@example(b'{"prompt": "a \\ud800", "completion": "b"}')
@example(b'{"text": ' + b"[" * 3000 + b"]" * 3000 + b"}")
@given(st.one_of(st.binary(max_size=120), records.map(_dumps), json_values.map(_dumps)))
def test_curation_lines_fail_only_as_malformed(raw):
    from loraops.data.curate import CurateOptions, _clean
    from loraops.data.formats import parse_line, to_output
    from loraops.errors import ConfigError

    try:
        record = _clean(parse_line(raw, 1), CurateOptions(), __import__("collections").Counter())
        if record.kind != "chat":
            json.dumps(to_output(record), ensure_ascii=False).encode("utf-8")   # what curate writes
    except DataFormatError as e:
        assert e.line == 1
    except ConfigError:                                     # chat data without a tokenizer
        pass
