import json
from pathlib import Path

from loraops.serve.api import openapi_schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
REGENERATE = ("python -c 'import json; from loraops.serve.api import openapi_schema; "
              "print(json.dumps(openapi_schema(), indent=2, sort_keys=True))' > docs/openapi.json")


def test_exported_openapi_is_current():
    assert json.loads(DOC.read_text()) == json.loads(json.dumps(openapi_schema())), \
        f"docs/openapi.json is stale: {REGENERATE}"


def test_every_route_documents_its_bodies_and_errors():
    schema = openapi_schema()
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/ready", "/metrics",
            "/admin/adapters"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if method == "post":
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in components, (path, ref)
            ok = op["responses"][str(201 if path == "/admin/adapters" and method == "post" else 200)]
            assert ok["content"] and all(c.get("schema") for c in ok["content"].values()), (path, method)
            for status, response in op["responses"].items():
                if status.startswith("4"):
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
            if path not in ("/health", "/ready"):
                assert "401" in op["responses"], (path, method)
    assert components["CompletionRequest"]["properties"]["prompt"] and "messages" in components[
        "ChatCompletionRequest"]["required"]
