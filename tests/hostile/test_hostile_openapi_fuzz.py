"""Schemathesis against the live server, driven by docs/openapi.json's schemas (positive and
negative bodies, every route): no 5xx, and every answer matches the documented status, content
type and schema. (The session's server: it runs last, and the names it may delete are random.)"""

import schemathesis
from hostile import ACME, ADMIN, METRICS, assert_healthy
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


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_matches_its_openapi_document(env, case):
    key = ADMIN if case.path.startswith("/admin") else METRICS if case.path == "/metrics" else ACME
    case.call_and_validate(base_url=env["url"], headers={"Authorization": f"Bearer {key}"}, checks=CHECKS,
                           timeout=30)


def test_the_server_is_healthy_after_the_fuzzing(env):
    assert_healthy(env)
