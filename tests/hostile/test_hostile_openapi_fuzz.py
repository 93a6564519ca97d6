"""Schemathesis against the live server, driven by docs/openapi.json's schemas (positive and
negative bodies, every route): no 5xx, and every answer matches the documented status, content
type and schema. (The session's server: it runs last, and the names it may delete are random.)

The fine-tuning routes are called as the tuner tenant (it may fine-tune the base), and half their
cases name its real file and job (or upload a valid file), so the shapes of real objects are
checked too, not only 404s."""

import httpx
import pytest
import schemathesis
from hostile import ACME, ADMIN, METRICS, TUNER, assert_healthy, post
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from loraops.serve.api import openapi_schema

CONFIG = schemathesis.Config.from_dict({"generation": {"mode": "all"}})
schema = schemathesis.openapi.from_dict(openapi_schema(), config=CONFIG)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
MODELS = ["acme-a", "acme-b", "acme-a:0.5+acme-b:0.5", "tiny"]


@schema.hook("map_body")
def _real_models_often(context, body):
    """Bodies name a served model half the time, so generation itself is fuzzed too, not only the 404."""
    if isinstance(body, dict) and "model" in body and hash(repr(body)) % 2:
        body = {**body, "model": MODELS[hash(repr(body)) % len(MODELS)]}
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
            body["max_tokens"] = 8
    return body


GOOD_FILE = b'{"text": "A passage to train on."}\n{"prompt": "Q", "completion": "A"}\n'


@pytest.fixture(scope="module")
def tuned(env):
    """The tuner's file and job (validating_files: no worker runs here)."""
    r = httpx.post(env["url"] + "/v1/files", files={"file": ("t.jsonl", GOOD_FILE)}, data={"purpose": "fine-tune"},
                   headers={"Authorization": f"Bearer {TUNER}"}, timeout=30)
    job = post(env, "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": r.json()["id"]}, key=TUNER).json()
    return {"file_id": r.json()["id"], "job_id": job["id"]}


def _with_real_objects(case, tuned: dict) -> None:
    """Half the fine-tuning cases: the tuner's real ids in the path and body, a valid file to upload."""
    if not case.path.startswith("/v1/f") or hash(repr((case.path_parameters, case.query, case.body))) % 2:
        return
    for name in set(case.path_parameters or {}) & set(tuned):
        case.path_parameters[name] = tuned[name]
    if isinstance(case.body, dict):
        if "training_file" in case.body:
            case.body["training_file"] = tuned["file_id"]
        if case.path == "/v1/files" and "file" in case.body:
            case.body["file"] = GOOD_FILE


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_matches_its_openapi_document(env, tuned, case):
    key = ADMIN if case.path.startswith("/admin") else METRICS if case.path == "/metrics" else \
        TUNER if case.path.startswith("/v1/f") else ACME
    _with_real_objects(case, tuned)
    case.call_and_validate(base_url=env["url"], headers={"Authorization": f"Bearer {key}"}, checks=CHECKS,
                           timeout=30)


def test_the_server_is_healthy_after_the_fuzzing(env):
    assert_healthy(env)
