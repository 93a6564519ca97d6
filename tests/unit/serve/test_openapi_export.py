import json
from pathlib import Path

from loraops.serve.api import openapi_schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
REGENERATE = ("python -c 'import json; from loraops.serve.api import openapi_schema; "
              "print(json.dumps(openapi_schema(), indent=2, sort_keys=True))' > docs/openapi.json")
# Every POST takes a JSON body, except these; an empty body (None) only where nothing is sent.
BODY_MEDIA = {"/v1/files": "multipart/form-data", "/v1/fine_tuning/jobs/{job_id}/cancel": None}
CREATED = {("/admin/adapters", "post")}


def test_exported_openapi_is_current():
    assert json.loads(DOC.read_text()) == json.loads(json.dumps(openapi_schema())), \
        f"docs/openapi.json is stale: {REGENERATE}"


def test_every_route_documents_its_bodies_and_errors():
    schema = openapi_schema()
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/ready", "/metrics",
            "/admin/adapters", "/v1/files", "/v1/fine_tuning/jobs"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            media = BODY_MEDIA.get(path, "application/json") if method == "post" else None
            if media is not None:
                (documented,) = op["requestBody"]["content"]
                assert documented == media, (path, documented)
                ref = op["requestBody"]["content"][media]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in components, (path, ref)
            else:
                assert "requestBody" not in op, (path, method)
            ok = op["responses"][str(201 if (path, method) in CREATED else 200)]
            assert ok["content"] and all(c.get("schema") for c in ok["content"].values()), (path, method)
            for status, response in op["responses"].items():
                if status.startswith("4"):
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
            if path not in ("/health", "/ready"):
                assert "401" in op["responses"], (path, method)
    assert components["CompletionRequest"]["properties"]["prompt"] and "messages" in components[
        "ChatCompletionRequest"]["required"]
    assert components["FileUpload"]["properties"]["file"]["format"] == "binary"
    assert {"model", "training_file"} <= set(components["JobCreateRequest"]["required"])
