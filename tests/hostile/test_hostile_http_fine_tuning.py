"""Hostile input to the fine-tuning API (/v1/files, /v1/fine_tuning/jobs) on the real server: every
case is one clean 4xx with an OpenAI error body, nothing is stored or changed, another tenant's
stream in flight meanwhile is unaffected, and the server stays healthy. Another tenant's ids answer
exactly like unknown ones. (The session's server has no worker: jobs stay validating_files.)"""

from __future__ import annotations

import hashlib
import json
import re
import socket

import httpx
import pytest
from hostile import (ACME, MAX_BODY, MAX_UPLOAD, TUNER, assert_healthy, assert_openai_error, bystander, get,
                     post)

GOOD = b'{"text": "A short training passage."}\n' * 3
FAKE = {"file": "file-" + "x" * 24, "ftjob": "ftjob-" + "x" * 24, "ftevent": "ftevent-" + "x" * 24,
        "ftckpt": "ftckpt-" + "x" * 24}


def upload(env, data: bytes, key=TUNER, filename="train.jsonl", purpose="fine-tune") -> httpx.Response:
    return httpx.post(env["url"] + "/v1/files", files={"file": (filename, data)}, data={"purpose": purpose},
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def request(env, method: str, path: str, key=TUNER, headers: dict = {}, **kw) -> httpx.Response:
    return httpx.request(method, env["url"] + path, headers={"Authorization": f"Bearer {key}", **headers},
                         timeout=60, **kw)


def file_ids(env, key=TUNER) -> list[str]:
    return [f["id"] for f in get(env, "/v1/files", key).json()["data"]]


def job_ids(env, key=TUNER) -> list[str]:
    return [j["id"] for j in get(env, "/v1/fine_tuning/jobs?limit=100", key).json()["data"]]


def stored(env, data: bytes) -> bool:
    digest = hashlib.sha256(data).hexdigest()
    return (env["home"] / "files" / "sha256" / digest[:2] / digest[2:]).exists()


@pytest.fixture(scope="module")
def owned(env):
    """The tuner tenant's file and job (validating_files: no worker runs here)."""
    f = upload(env, GOOD)
    assert f.status_code == 200, f.text
    job = post(env, "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": f.json()["id"]}, key=TUNER)
    assert job.status_code == 200, job.text
    event = get(env, f"/v1/fine_tuning/jobs/{job.json()['id']}/events", TUNER).json()["data"][0]
    return {"file": f.json()["id"], "ftjob": job.json()["id"], "ftevent": event["id"], "job": job.json()}


# ---- uploads ------------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# name -> (file bytes, a fragment of the message): each a 400 invalid_file naming its line.
BAD_FILES = {
    "not-utf8": (GOOD + b'{"text": "caf\xe9 \xff\xfe"}\n', "line 4: not UTF-8"),
    "binary": (b"PK\x03\x04\x14\x00\x08\x00" + bytes(range(256)) * 4, "line 1: bad JSON"),
    "lone-surrogate": (b'{"text": "ab\\ud800cd"}\n', "line 1: field \"text\" holds a lone surrogate"),
    "surrogate-in-chat": (b'{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", '
                          b'"content": "ok"}]}\n', "line 1: "),
    "array-line": (GOOD + b'[{"text": "in a list"}]\n', "line 4: expected a JSON object, got list"),
    "string-line": (b'"just a string"\n', "line 1: expected a JSON object, got str"),
    "nested-100k": (GOOD + nested(100_000) + b"\n", "line 4: bad JSON (nested too deeply)"),
    "nested-100k-in-object": (b'{"text": ' + nested(100_000) + b"}\n", "line 1: bad JSON (nested too deeply)"),
    "int-5000-digits": (b'{"text": ' + b"9" * 5000 + b"}\n", "line 1: bad JSON"),
    "raw-nul": (b'{"text": "a\x00b"}\n', "line 1: bad JSON"),
    "no-records": (b"\n  \n\n", "holds no records"),
    "text-not-string": (b'{"text": 5}\n', "line 1: "),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_hostile_file_is_one_clean_400_and_nothing_is_stored(env, owned, case):
    data, fragment = BAD_FILES[case]
    before = file_ids(env)
    with bystander(env):
        err = assert_openai_error(upload(env, data), 400, "invalid_file", "file")
    assert fragment in err["message"], err
    assert file_ids(env) == before and not stored(env, data)
    assert_healthy(env)


def multipart(boundary: bytes, parts: list[tuple[bytes, bytes]]) -> bytes:
    """A hand-written multipart body: (part headers, part bytes) each."""
    body = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n" for headers, data in parts)
    return body + b"--" + boundary + b"--\r\n"


FILE_PART = (b'Content-Disposition: form-data; name="file"; filename="t.jsonl"', GOOD)
PURPOSE_PART = (b'Content-Disposition: form-data; name="purpose"', b"fine-tune")
# name -> (content type, body, param): each a 400 that names what is wrong.
BAD_FORMS = {
    "purpose-missing": (b"multipart/form-data; boundary=b0", multipart(b"b0", [FILE_PART]), "purpose"),
    "purpose-other": (b"multipart/form-data; boundary=b0", multipart(b"b0", [
        FILE_PART, (PURPOSE_PART[0], b"assistants")]), "purpose"),
    "file-missing": (b"multipart/form-data; boundary=b0", multipart(b"b0", [PURPOSE_PART]), "file"),
    "file-is-a-field": (b"multipart/form-data; boundary=b0", multipart(b"b0", [
        PURPOSE_PART, (b'Content-Disposition: form-data; name="file"', GOOD)]), "file"),
    "two-files": (b"multipart/form-data; boundary=b0", multipart(b"b0", [PURPOSE_PART, FILE_PART, FILE_PART]), None),
    "many-fields": (b"multipart/form-data; boundary=b0", multipart(b"b0", [PURPOSE_PART, FILE_PART] + [
        (b'Content-Disposition: form-data; name="f%d"' % i, b"x") for i in range(20)]), None),
    "no-boundary": (b"multipart/form-data", multipart(b"b0", [PURPOSE_PART, FILE_PART]), None),
    "truncated": (b"multipart/form-data; boundary=b0", multipart(b"b0", [PURPOSE_PART, FILE_PART])[:-40], None),
    "json-body": (b"application/json", json.dumps({"purpose": "fine-tune", "file": GOOD.decode()}).encode(),
                  "purpose"),
    "urlencoded": (b"application/x-www-form-urlencoded", b"purpose=fine-tune&file=abc", "file"),
}


@pytest.mark.parametrize("case", BAD_FORMS, ids=list(BAD_FORMS))
def test_a_malformed_upload_form_is_one_clean_400(env, owned, case):
    content_type, body, param = BAD_FORMS[case]
    before = file_ids(env)
    with bystander(env):
        r = request(env, "POST", "/v1/files", content=body, headers={"Content-Type": content_type.decode()})
        assert_openai_error(r, 400, param=param)
    assert file_ids(env) == before
    assert_healthy(env)


def declared_only(env, length: int) -> tuple[int, bytes]:
    """Send the head of an upload that declares `length` bytes and only the head: the answer must
    come without the server waiting for the rest."""
    host, port = env["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TUNER}\r\n"
                     f"Content-Type: multipart/form-data; boundary=b0\r\nContent-Length: {length}\r\n\r\n--b0\r\n"
                     .encode())
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"content-length: (\d+)", reply.lower()).group(1)):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), body


def test_the_upload_limit_is_its_own_and_past_it_is_413_stored_nothing(env, owned):
    line = b'{"text": "' + b"a" * 990 + b'"}\n'
    big = line * ((MAX_BODY + 10_000) // len(line))                    # over the JSON body limit, under ours
    assert MAX_BODY < len(big) < MAX_UPLOAD
    kept = upload(env, big)
    assert kept.status_code == 200 and kept.json()["bytes"] == len(big), kept.text
    too_big = line * (MAX_UPLOAD // len(line) + 1)
    before = file_ids(env)
    with bystander(env):
        assert_openai_error(upload(env, too_big), 413, "file_too_large", "file")    # the file part is over

        def chunks():                                                   # no Content-Length: counted as read
            body = multipart(b"b0", [PURPOSE_PART, (FILE_PART[0], too_big * 3)])
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]
        r = request(env, "POST", "/v1/files", content=chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=b0"})
        assert_openai_error(r, 413, "file_too_large", "file")
        status, answer = declared_only(env, 10 * MAX_UPLOAD)            # refused on its Content-Length, unread
        assert status == 413 and json.loads(answer)["error"]["code"] == "file_too_large", answer
    assert file_ids(env) == before and not stored(env, too_big)
    assert request(env, "DELETE", f"/v1/files/{kept.json()['id']}").json()["deleted"] is True
    assert_healthy(env)


def test_a_hostile_file_name_is_kept_harmless(env, owned):
    body = multipart(b"b0", [PURPOSE_PART, (b'Content-Disposition: form-data; name="file"; '
                                            b'filename="../../etc/pass\x00wd\x1b[31m.jsonl"', GOOD)])
    r = request(env, "POST", "/v1/files", content=body,
                headers={"Content-Type": "multipart/form-data; boundary=b0"})
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "passwd[31m.jsonl"
    assert request(env, "DELETE", f"/v1/files/{r.json()['id']}").json()["deleted"] is True


# ---- lists ----------------------------------------------------------------------------------------


LISTS = {"/v1/files": ("file", 10_000), "/v1/fine_tuning/jobs": ("ftjob", 100),
         "/v1/fine_tuning/jobs/{job}/events": ("ftevent", 1000),
         "/v1/fine_tuning/jobs/{job}/checkpoints": ("ftckpt", 100)}
BAD_LIMITS = ["0", "-1", "abc", "\u00b2", "1.5", "1e3", " 5", "9" * 5000, "", "{most}1"]


@pytest.mark.parametrize("route", LISTS)
def test_bad_pagination_is_a_400_naming_the_parameter(env, owned, route):
    path, (prefix, most) = route.format(job=owned["ftjob"]), LISTS[route]
    with bystander(env):
        for limit in BAD_LIMITS:
            value = limit.format(most=most)
            assert_openai_error(get(env, path, TUNER, params={"limit": value}), 400, "invalid_value", "limit")
        for after in (FAKE[prefix], "x", "\x00", "file-" + "\x00" * 24, "a" * 10_000, FAKE["ftjob" if prefix ==
                                                                                              "file" else "file"]):
            assert_openai_error(get(env, path, TUNER, params={"after": after}), 400, "invalid_value", "after")
    ok = get(env, path, TUNER, params={"limit": str(most)})
    assert ok.status_code == 200 and ok.json()["object"] == "list", ok.text
    assert_healthy(env)


def test_bad_list_filters(env, owned):
    assert_openai_error(get(env, "/v1/files", TUNER, params={"order": "sideways"}), 400, "invalid_value", "order")
    for purpose in ("\x00", "assistants", "x" * 5000):              # no file has it: an empty list
        r = get(env, "/v1/files", TUNER, params={"purpose": purpose})
        assert r.status_code == 200 and r.json()["data"] == [] and r.json()["has_more"] is False, r.text
    assert owned["file"] in [f["id"] for f in get(env, "/v1/files", TUNER, params={"purpose": "fine-tune"})
                             .json()["data"]]


# ---- another tenant's ids -------------------------------------------------------------------------


OBJECT_ROUTES = [("GET", "/v1/files/{file}"), ("GET", "/v1/files/{file}/content"), ("DELETE", "/v1/files/{file}"),
                 ("GET", "/v1/fine_tuning/jobs/{ftjob}"), ("POST", "/v1/fine_tuning/jobs/{ftjob}/cancel"),
                 ("GET", "/v1/fine_tuning/jobs/{ftjob}/events"), ("GET", "/v1/fine_tuning/jobs/{ftjob}/checkpoints")]


def _same_but_id(theirs: httpx.Response, unknown: httpx.Response, their_id: str, unknown_id: str) -> None:
    assert (theirs.status_code, theirs.headers["content-type"]) == (unknown.status_code,
                                                                   unknown.headers["content-type"])
    assert theirs.json() == json.loads(unknown.text.replace(unknown_id, their_id))


@pytest.mark.parametrize("method,route", OBJECT_ROUTES, ids=[f"{m} {r}" for m, r in OBJECT_ROUTES])
def test_another_tenants_ids_answer_exactly_like_unknown_ones(env, owned, method, route):
    prefix = "file" if "{file}" in route else "ftjob"
    with bystander(env):
        theirs = request(env, method, route.format(**owned), key=ACME)
        unknown = request(env, method, route.format(**FAKE), key=ACME)
        assert_openai_error(theirs, 404, "not_found")
        _same_but_id(theirs, unknown, owned[prefix], FAKE[prefix])
        for hostile in ("%00", "x" * 5000, "file-%00", owned[prefix] + "%0A", "..%2F..%2Fregistry.db"):
            assert_openai_error(request(env, method, route.format(**{**owned, prefix: hostile}), key=ACME), 404)
    assert get(env, f"/v1/files/{owned['file']}", TUNER).status_code == 200      # the owner's are untouched
    job = get(env, f"/v1/fine_tuning/jobs/{owned['ftjob']}", TUNER).json()
    assert job == {**owned["job"], "status": job["status"]} and job["status"] == "validating_files"
    assert_healthy(env)


def test_another_tenants_ids_in_a_body_or_cursor_answer_like_unknown_ones(env, owned):
    body = {"model": "tiny", "training_file": owned["file"]}
    theirs = post(env, "/v1/fine_tuning/jobs", body, key=ACME)
    unknown = post(env, "/v1/fine_tuning/jobs", {**body, "training_file": FAKE["file"]}, key=ACME)
    assert_openai_error(theirs, 400, param="training_file")
    _same_but_id(theirs, unknown, owned["file"], FAKE["file"])
    for path, prefix in (("/v1/files", "file"), ("/v1/fine_tuning/jobs", "ftjob")):
        theirs, unknown = (get(env, path, ACME, params={"after": i}) for i in (owned[prefix], FAKE[prefix]))
        assert_openai_error(theirs, 400, param="after")
        _same_but_id(theirs, unknown, owned[prefix], FAKE[prefix])


FT_MODEL = "ft:tiny:tuner::" + FAKE["ftjob"]
HOSTILE_MODELS = [FT_MODEL, FT_MODEL + ":ckpt-step-5", "ft:tiny:tuner::ftjob-\x00" + "x" * 23, "ft:" + "x" * 10_000,
                  "ft:acme-a:0.5+acme-b:0.5", "ft:", "ft:tiny:acme::" + FAKE["ftjob"] + "\n"]


@pytest.mark.parametrize("model", HOSTILE_MODELS, ids=range(len(HOSTILE_MODELS)))
def test_a_fine_tuned_model_id_that_names_nothing_is_404_everywhere(env, model):
    with bystander(env):
        for route, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                            ("/v1/completions", {"prompt": "hi"})):
            assert_openai_error(post(env, route, {"model": model, "max_tokens": 2, **body}, key=TUNER), 404,
                                "model_not_found", "model")
        if "\x00" not in model and "\n" not in model:
            assert_openai_error(get(env, f"/v1/models/{model}", TUNER), 404, "model_not_found", "model")


def test_a_fine_tuned_model_id_is_no_part_of_a_composition(env):
    """A leading "ft:" is looked up as one fine-tuned id (this one names nothing: 404); anywhere
    else it is a malformed composition part (400)."""
    for model, status, code in ((f"{FT_MODEL}:0.5+acme-a:0.5", 404, "model_not_found"),
                                (f"acme-a:0.5+{FT_MODEL}:0.5", 400, "invalid_value")):
        r = post(env, "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2}, key=TUNER)
        assert_openai_error(r, status, code, "model")


# ---- job bodies -------------------------------------------------------------------------------------


def job_raw(field: str, value: str, file_id: str = "FILE") -> bytes:
    """A job body whose `field` is spliced in as raw JSON text (NaN, 1e309, 5,000 digits)."""
    return f'{{"model": "tiny", "training_file": "{file_id}", "{field}": {value}}}'.encode()


def hp(value: str, name: str = "n_epochs") -> str:
    return f'{{"{name}": {value}}}'


# name -> (raw body with FILE for the owner's file id, param)
BAD_JOBS = {
    "epochs-string": (job_raw("hyperparameters", hp('"3"')), "hyperparameters.n_epochs"),
    "epochs-bool": (job_raw("hyperparameters", hp("true")), "hyperparameters.n_epochs"),
    "epochs-float": (job_raw("hyperparameters", hp("3.5")), "hyperparameters.n_epochs"),
    "epochs-list": (job_raw("hyperparameters", hp("[3]")), "hyperparameters.n_epochs"),
    "epochs-null": (job_raw("hyperparameters", hp("null")), "hyperparameters.n_epochs"),
    "epochs-51": (job_raw("hyperparameters", hp("51")), "hyperparameters.n_epochs"),
    "epochs-4000-digits": (job_raw("hyperparameters", hp("9" * 4000)), "hyperparameters.n_epochs"),
    "epochs-5000-digits": (job_raw("hyperparameters", hp("9" * 5000)), None),
    "batch-1e30": (job_raw("hyperparameters", hp("1000000000000000000000000000000", "batch_size")),
                   "hyperparameters.batch_size"),
    "lrm-nan": (job_raw("hyperparameters", hp("NaN", "learning_rate_multiplier")), None),
    "lrm-infinity": (job_raw("hyperparameters", hp("Infinity", "learning_rate_multiplier")), None),
    "lrm-1e309": (job_raw("hyperparameters", hp("1e309", "learning_rate_multiplier")),
                  "hyperparameters.learning_rate_multiplier"),
    "lrm-1e-320": (job_raw("hyperparameters", hp("1e-320", "learning_rate_multiplier")),
                   "hyperparameters.learning_rate_multiplier"),
    "lrm-zero": (job_raw("hyperparameters", hp("-0.0", "learning_rate_multiplier")),
                 "hyperparameters.learning_rate_multiplier"),
    "lrm-string": (job_raw("hyperparameters", hp('"1.0"', "learning_rate_multiplier")),
                   "hyperparameters.learning_rate_multiplier"),
    "hp-unknown": (job_raw("hyperparameters", hp("1", "warmup")), "hyperparameters.warmup"),
    "hp-list": (job_raw("hyperparameters", "[]"), "hyperparameters"),
    "method-nan": (job_raw("method", '{"type": "supervised", "supervised": {"hyperparameters": '
                                     '{"learning_rate_multiplier": 1e309}}}'),
                   "method.supervised.hyperparameters.learning_rate_multiplier"),
    "method-string": (job_raw("method", '"supervised"'), "method"),
    "method-dpo": (job_raw("method", '{"type": "dpo"}'), "method.type"),
    "method-supervised-list": (job_raw("method", '{"type": "supervised", "supervised": []}'), "method.supervised"),
    "method-extra": (job_raw("method", '{"type": "supervised", "dpo": {}}'), "method.dpo"),
    "alpha-1e309": (job_raw("loraops", '{"alpha": 1e309}'), "loraops.alpha"),
    "alpha-nan": (job_raw("loraops", '{"alpha": NaN}'), None),
    "alpha-zero": (job_raw("loraops", '{"alpha": 0}'), "loraops.alpha"),
    "alpha-bool": (job_raw("loraops", '{"alpha": true}'), "loraops.alpha"),
    "rank-string": (job_raw("loraops", '{"rank": "8"}'), "loraops.rank"),
    "rank-over-the-servers": (job_raw("loraops", '{"rank": 64}'), "loraops.rank"),
    "loraops-list": (job_raw("loraops", "[]"), "loraops"),
    "loraops-unknown": (job_raw("loraops", '{"learning_rate": 1}'), "loraops.learning_rate"),
    "seed-negative": (job_raw("seed", "-1"), "seed"),
    "seed-2-31": (job_raw("seed", str(2**31)), "seed"),
    "seed-float": (job_raw("seed", "7.0"), "seed"),
    "suffix-number": (job_raw("suffix", "123"), "suffix"),
    "suffix-upper": (job_raw("suffix", '"Tickets"'), "suffix"),
    "suffix-newline": (job_raw("suffix", '"tickets\\n"'), "suffix"),
    "suffix-surrogate": (job_raw("suffix", '"t\\ud800"'), "suffix"),
    "suffix-65": (job_raw("suffix", '"' + "a" * 65 + '"'), "suffix"),
    "metadata-nested": (job_raw("metadata", '{"a": {"b": "c"}}'), "metadata"),
    "metadata-17": (job_raw("metadata", json.dumps({f"k{i}": "v" for i in range(17)})), "metadata"),
    "integrations": (job_raw("integrations", '[{"type": "wandb"}]'), "integrations"),
    "integrations-object": (job_raw("integrations", "{}"), "integrations"),
    "training-file-nul": (job_raw("training_file", '"file-\\u0000xxxxxxxxxxxxxxxxxxxxxxx"'), "training_file"),
    "training-file-number": (b'{"model": "tiny", "training_file": 5}', "training_file"),
    "training-file-long": (b'{"model": "tiny", "training_file": "' + b"f" * 5000 + b'"}', "training_file"),
    "validation-file-other-tenants": (job_raw("validation_file", '"OTHER"'), "validation_file"),
    "model-nul": (b'{"model": "ti\\u0000ny", "training_file": "FILE"}', "model"),
    "model-ft-nul": (b'{"model": "ft:tiny:tuner::ftjob-\\u0000", "training_file": "FILE"}', "model"),
    "model-composition": (b'{"model": "tiny:0.5+acme-a:0.5", "training_file": "FILE"}', "model"),
    "model-number": (b'{"model": 5, "training_file": "FILE"}', "model"),
    "unknown-field": (job_raw("learning_rate", "0.1"), "learning_rate"),
    "top-level-array": (b'[{"model": "tiny"}]', None),
    "nested-100k": (job_raw("metadata", nested(100_000).decode()), None),
    "not-utf8": (b'{"model": "tiny\xff", "training_file": "FILE"}', None),
}


@pytest.mark.parametrize("case", BAD_JOBS, ids=list(BAD_JOBS))
def test_a_hostile_job_body_is_one_clean_400_and_creates_nothing(env, owned, case):
    raw, param = BAD_JOBS[case]
    other = upload(env, GOOD, key=ACME).json()["id"] if b"OTHER" in raw else ""
    raw = raw.replace(b"FILE", owned["file"].encode()).replace(b"OTHER", other.encode())
    before = job_ids(env)
    with bystander(env):
        assert_openai_error(post(env, "/v1/fine_tuning/jobs", raw=raw, key=TUNER), 400, "invalid_value"
                            if param not in ("model",) else None, param)
    assert job_ids(env) == before      # (the server's health: after the whole group, below)


def test_the_server_is_healthy_after_the_hostile_job_bodies_and_model_ids(env):
    assert_healthy(env)


def test_a_job_body_over_the_json_limit_is_413_unread(env, owned):
    body = json.dumps({"model": "tiny", "training_file": owned["file"], "metadata": {"k": "v" * MAX_BODY}}).encode()
    with bystander(env):
        assert_openai_error(post(env, "/v1/fine_tuning/jobs", raw=body, key=TUNER), 413, "request_too_large")
    assert_healthy(env)


# ---- state ------------------------------------------------------------------------------------------


def test_cancelling_a_finished_job_is_a_400_that_changes_nothing(env, owned):
    job = post(env, "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": owned["file"]}, key=TUNER).json()
    path = f"/v1/fine_tuning/jobs/{job['id']}"
    assert_openai_error(request(env, "DELETE", f"/v1/files/{owned['file']}"), 400, "invalid_value", "file_id")
    cancelled = request(env, "POST", path + "/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    with bystander(env):
        for _ in range(3):
            err = assert_openai_error(request(env, "POST", path + "/cancel"), 400, "invalid_value",
                                      "fine_tuning_job_id")
            assert "has finished (cancelled)" in err["message"]
    assert get(env, path, TUNER).json() == cancelled
    events = get(env, path + "/events", TUNER).json()["data"]
    assert [e["message"] for e in events] == ["Job cancelled", f"Created fine-tuning job: {job['id']}"]
    assert_healthy(env)


def test_a_file_whose_bytes_rotted_on_disk_is_a_clear_500_for_its_owner_only(env, owned):
    data = b'{"text": "these bytes will rot on the server"}\n'
    f = upload(env, data).json()
    digest = hashlib.sha256(data).hexdigest()
    blob = env["home"] / "files" / "sha256" / digest[:2] / digest[2:]
    blob.write_bytes(b'{"text": "these bytes were changed behind our back"}\n')
    with bystander(env):
        err = assert_openai_error(get(env, f"/v1/files/{f['id']}/content", TUNER), 500, "file_corrupt")
    assert "sha256" in err["message"] and str(blob) not in err["message"]   # no server paths to the client
    assert get(env, f"/v1/files/{owned['file']}/content", TUNER).content == GOOD
    assert request(env, "DELETE", f"/v1/files/{f['id']}").json()["deleted"] is True
    assert not blob.exists()
    assert_healthy(env)
