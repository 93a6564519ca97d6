import json
from pathlib import Path

from loraops.serve.api import openapi_schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def test_exported_openapi_is_current():
    schema = openapi_schema()
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/ready", "/metrics"} <= set(schema["paths"])
    assert json.loads(DOC.read_text()) == json.loads(json.dumps(schema)), (
        "docs/openapi.json is stale: python -c 'import json; from loraops.serve.api import openapi_schema; "
        "print(json.dumps(openapi_schema(), indent=2, sort_keys=True))' > docs/openapi.json")
