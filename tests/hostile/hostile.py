"""Helpers of the hostile-input suite: a real `loraops serve` on 127.0.0.1 with two tenants on a tiny
base (conftest.py starts one for the session), an OpenAI-error assertion, a health check, and a
bystander (another tenant's streaming request in flight while the hostile one is sent, whose output
must be its solo output exactly)."""

from __future__ import annotations

import hashlib
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import random_adapter  # noqa: E402
from tiny import save_tiny, tiny_llama  # noqa: E402

from loraops.lora import save_adapter  # noqa: E402
from loraops.models import fingerprint_dir  # noqa: E402

ACME, BETA, ADMIN, METRICS = "sk-acme-hostile-01", "sk-beta-hostile-02", "admin-hostile-key", "metrics-hostile-key"
SLOW = "sk-slow-hostile-03"
MAX_BODY, MAX_PROMPT_CHARS, MAX_TOKENS = 262_144, 4096, 200
BYSTANDER = {"model": "beta-c", "prompt": "The quick brown fox", "max_tokens": 24, "temperature": 0}
PROBE = {"model": "acme-b", "prompt": "Invoice number", "max_tokens": 4, "temperature": 0}

TENANTS = f"""
[tenants.acme]
api_keys = ["{ACME}"]
adapters = ["acme-a", "acme-b", "acme-promo"]

[tenants.beta]
api_key_hashes = ["sha256:{hashlib.sha256(BETA.encode()).hexdigest()}"]
adapters = ["beta-c"]
allow_base = true

[tenants.slow]
api_keys = ["{SLOW}"]
adapters = ["beta-c"]
rate_limit = {{ requests_per_minute = 2 }}
"""


def serve(d: Path, name: str, extra: list[str] = ()) -> dict:
    """A server over a fresh tiny base and home in `d`, adapters acme-a, acme-b, beta-c."""
    base = save_tiny(d / "tiny", "llama")
    model = tiny_llama(0)
    meta = {"base_fingerprint": fingerprint_dir(base), "base_name": "tiny"}
    dirs = {n: str(save_adapter(random_adapter(model, r, t, seed=i, meta=meta), d / n))
            for i, (n, r, t) in enumerate([("acme-a", 4, ["q_proj", "v_proj"]), ("acme-b", 8, "all-linear"),
                                           ("beta-c", 2, ["o_proj"])])}
    (d / "tenants.toml").write_text(TENANTS)
    home = d / "home"
    args = ["--base", str(base), "--tenants", str(d / "tenants.toml"), "--admin-key", ADMIN,
            "--metrics-key", METRICS, "--max-slots", "4", "--max-rank", "8", "--max-batch", "8",
            "--max-tokens-cap", str(MAX_TOKENS), "--max-body-bytes", str(MAX_BODY),
            "--max-prompt-chars", str(MAX_PROMPT_CHARS), *extra]
    for n, path in dirs.items():
        args += ["--adapter", f"{n}={path}"]
    server = Server(args, d / f"{name}.log", env={"LORAOPS_HOME": str(home)})
    return {"server": server, "url": server.url, "dirs": dirs, "base": base, "home": home, "model": model,
            "meta": meta, "tmp": d}


def post(env, path: str, body=None, key: str | None = ACME, raw: bytes | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return httpx.post(env["url"] + path, content=raw, headers=headers, timeout=60, **kw)
    return httpx.post(env["url"] + path, json=body, headers=headers, timeout=60, **kw)


def get(env, path: str, key: str | None = None) -> httpx.Response:
    return httpx.get(env["url"] + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "code", "param"} and isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def assert_healthy(env) -> None:
    """The server answers, its engine and loader run, and a request is served exactly as before."""
    assert get(env, "/health").json() == {"status": "ok"}
    assert get(env, "/ready").status_code == 200
    r = post(env, "/v1/completions", PROBE)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == env["probe_text"], r.text


@contextmanager
def bystander(env):
    """Another tenant's greedy streaming request, started (first chunk received) before the block
    runs; on exit it must have finished with exactly its solo output."""
    started, result = threading.Event(), {}

    def run():
        text = []
        try:
            with httpx.stream("POST", env["url"] + "/v1/completions", json={**BYSTANDER, "stream": True},
                              headers={"Authorization": f"Bearer {BETA}"}, timeout=60) as r:
                result["status"] = r.status_code
                for line in r.iter_lines():
                    started.set()
                    if line.startswith("data: {"):
                        import json
                        chunk = json.loads(line[6:])
                        text += [c["text"] for c in chunk.get("choices", [])]
        finally:
            result["text"] = "".join(text)
            started.set()
    thread = threading.Thread(target=run)
    thread.start()
    started.wait(30)
    yield
    thread.join(60)
    assert result.get("status") == 200 and result["text"] == env["bystander_text"], result


# ---- hostile adapter directories --------------------------------------------------------------

WEIGHTS, CONFIG, META = "adapter_model.safetensors", "adapter_config.json", "loraops.json"


def _edit_tensors(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file
    sd = load_file(d / WEIGHTS)
    fn(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, d / WEIGHTS)


def _edit_json(d: Path, name: str, fn) -> None:
    import json
    (d / name).write_text(fn(json.loads((d / name).read_text())))


def hostile_adapters(d: Path, model, meta: dict) -> dict[str, tuple[Path, str]]:
    """name -> (adapter directory, a fragment of the error it must get): one mutation of a good
    adapter each. Every one of these once loaded (silently cast, NaN in every batch) or was a 500."""
    import json
    import shutil

    import torch

    good = save_adapter(random_adapter(model, 4, ["q_proj", "v_proj"], seed=7, meta=meta), d / "good")
    a_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    b_key = a_key.replace("lora_A", "lora_B")

    def set_(key, value):
        return lambda sd: sd.__setitem__(key, value)

    def b_value(x):
        return lambda sd: sd.__setitem__(b_key, torch.full_like(sd[b_key], x))

    def rank_zero(sd):
        sd[a_key], sd[b_key] = torch.zeros(0, sd[a_key].shape[1]), torch.zeros(sd[b_key].shape[0], 0)

    def with_config(**fields):
        return lambda c: json.dumps({**c, **fields})

    tensors = {
        "nan-weights": (b_value(float("nan")), "non-finite"),
        "inf-weights": (b_value(float("inf")), "non-finite"),
        "rank-0": (rank_zero, "empty"),
        "int8": (set_(a_key, torch.ones(4, 32, dtype=torch.int8)), "dtype int8"),
        "bool": (set_(a_key, torch.ones(4, 32, dtype=torch.bool)), "dtype bool"),
        "complex": (set_(a_key, torch.ones(4, 32, dtype=torch.complex64)), "dtype complex64"),
        "float8": (set_(a_key, torch.ones(4, 32).to(torch.float8_e4m3fn)), "dtype float8"),
        "scalar-tensor": (set_(a_key, torch.tensor(1.0)), "rank mismatch"),
    }
    configs = {
        "alpha-infinity": (lambda c: json.dumps({**c, "lora_alpha": 1}).replace('"lora_alpha": 1', '"lora_alpha": Infinity'),
                           "Infinity is not valid JSON"),
        "alpha-1e309": (lambda c: json.dumps({**c, "lora_alpha": 1}).replace('"lora_alpha": 1', '"lora_alpha": 1e309'),
                        "alpha must be a finite positive number"),
        "alpha-pattern-string": (with_config(alpha_pattern={"q_proj": "x"}), "alpha_pattern"),
        "alpha-pattern-list": (with_config(alpha_pattern=[1, 2]), "alpha_pattern"),
        "rank-string": (with_config(r="8"), "rank must be a positive integer"),
        "dora-string": (with_config(use_dora="yes"), "use_dora must be true or false"),
        "targets-nested": (with_config(target_modules=[["q_proj"]]), "target_modules"),
        "config-nested-deep": (lambda c: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "config-dict-nested": (lambda c: json.dumps({**c, "r": {"r": {"r": 1}}}), "rank must be a positive integer"),
        "config-list": (lambda c: "[1]", "must hold a JSON object"),
        "config-not-utf8": (lambda c: "\udcff", "not valid JSON"),
    }
    metas = {
        "meta-list": (lambda m: "[1]", "must hold a JSON object"),
        "meta-parents-string": (lambda m: json.dumps({**m, "parents": "abc"}), "'parents' must be a list"),
        "meta-parent-version-x": (lambda m: json.dumps({**m, "parents": [{"name": "p", "version": "x"}]}),
                                  "parents[0].version"),
        "meta-parent-weight-nan": (lambda m: json.dumps({**m, "parents": [{"name": "p", "weight": 1}]})
                                   .replace('"weight": 1', '"weight": NaN'), "NaN is not valid JSON"),
        "meta-fingerprint-number": (lambda m: json.dumps({**m, "base_fingerprint": 5}), "'base_fingerprint' must be"),
    }
    out = {}
    for group, edit in ((tensors, _edit_tensors), (configs, None), (metas, None)):
        for name, (fn, fragment) in group.items():
            target = d / name
            shutil.copytree(good, target)
            if edit is not None:
                edit(target, fn)
            else:
                file = CONFIG if group is configs else META
                text = fn(json.loads((target / file).read_text()))
                (target / file).write_bytes(text.encode("utf-8", "surrogateescape"))
            out[name] = (target, fragment)
    directory = d / "config-is-a-directory"
    shutil.copytree(good, directory)
    (directory / CONFIG).unlink()
    (directory / CONFIG).mkdir()
    out["config-is-a-directory"] = (directory, "cannot read")
    return out
