"""The dashboard of the real server (`--registry --base DIR`, admin key) against forged cookies,
impossible names, replayed cookies and cross-site POSTs; and its promotion gate finds the base."""

import re

import httpx
import pytest
from hostile import ACME, ADMIN, get

from loraops.evals import EvalReport, forgetting_score
from loraops.evals.general import GeneralScores
from loraops.evals.metrics import DomainScores
from loraops.lora import save_adapter
from loraops.registry import Registry

from lora_factory import random_adapter  # noqa: E402  (tests/unit/serve, on the path through hostile)


def sign_in(env) -> httpx.Client:
    c = httpx.Client(base_url=env["url"], timeout=30, follow_redirects=False)
    r = c.post("/ui/login", data={"key": ADMIN})
    assert r.status_code == 303 and "loraops_ui" in c.cookies
    return c


def csrf_of(client: httpx.Client, name: str) -> str:
    page = client.get(f"/ui/adapters/{name}/confirm", params={"action": "promote", "version": 1})
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)


@pytest.fixture(scope="module")
def promo(env, tmp_path_factory):
    """acme-promo@1 in the server's registry, with a stored evaluation on the served base that passes
    the gate (domain 0.2 -> 0.8, no forgetting)."""
    d = tmp_path_factory.mktemp("promo")
    fp = env["meta"]["base_fingerprint"]
    general = GeneralScores(100, 10.0, 10.0, 0.01, 30, 20, 1.0, 1.0, "sha256:g")
    scores = [DomainScores(10, 0.0, 0.0, 10, a, {}, 0, 0.0, "field_accuracy") for a in (0.2, 0.8)]
    comparable = {"base_fingerprint": fp, "general_suite": "sha256:g", "data_digest": "sha256:d", "examples": 10,
                  "max_new_tokens": 16}
    report = EvalReport("acme-promo@1", {"name": "tiny", "fingerprint": fp}, comparable, general,
                        forgetting_score(10.0, 10.0, 0.01, 1.0, 1.0), *scores).to_dict()
    with Registry(home=env["home"]) as reg:
        reg.register_base(fp, "tiny")
        reg.push(save_adapter(random_adapter(env["model"], 2, ["q_proj"], seed=3, meta=env["meta"]), d / "v1"),
                 "acme-promo", tenant="acme")
        reg.record_eval("acme-promo", 1, report)
    return "acme-promo"


def production(env, name):
    with Registry(home=env["home"]) as reg:
        return reg.show(name).stages.get("production")


@pytest.mark.parametrize("cookie", ["admin.9999999999.00.\u00e9\u00e9", "admin.9999999999.00." + "\u00ff" * 64,
                                    "admin.x.y.z", "....", "admin"])
def test_a_malformed_cookie_is_no_session(env, cookie):
    headers = {"Cookie": f"loraops_ui={cookie}".encode("latin-1")}
    r = httpx.get(env["url"] + "/ui", headers=headers, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    r = httpx.post(env["url"] + "/ui/adapters/acme-promo/rollback", headers=headers, data={"csrf": "x"}, timeout=10)
    assert r.status_code == 403


@pytest.mark.parametrize("name", ["UPPER", "a%00b", "%2E%2E", "x" * 300, "%F0%9F%92%A9", "a@b"])
def test_an_impossible_adapter_name_is_404(env, name):
    c = sign_in(env)
    assert c.get(f"/ui/adapters/{name}").status_code == 404


def test_sign_out_revokes_the_cookie(env, promo):
    c = sign_in(env)
    cookie = c.cookies["loraops_ui"]
    assert c.get("/ui").status_code == 200
    token = csrf_of(c, promo)
    assert c.post("/ui/logout", data={"csrf": token}).status_code == 303
    replay = httpx.get(env["url"] + "/ui", cookies={"loraops_ui": cookie}, timeout=10)
    assert replay.status_code == 303 and replay.headers["location"] == "/ui/login"


def test_a_cross_site_post_is_refused_and_a_dashboard_one_promotes_through_the_gate(env, promo):
    c = sign_in(env)
    token = csrf_of(c, promo)
    form = {"version": "1", "stage": "production", "reason": "", "csrf": token}
    r = c.post(f"/ui/adapters/{promo}/promote", data=form, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "Cross-site" in r.text
    r = c.post(f"/ui/adapters/{promo}/promote", data={**form, "csrf": ""})
    assert r.status_code == 403
    r = c.post(f"/ui/adapters/{promo}/promote", data={**form, "csrf": "f" * 64})
    assert r.status_code == 403
    assert production(env, promo) is None
    # From the dashboard's own page: the gate runs on the served base (given as a directory) and passes.
    r = c.post(f"/ui/adapters/{promo}/promote", data=form, headers={"Origin": env["url"]})
    assert r.status_code == 303 and "Promoted" in httpx.URL(r.headers["location"]).params["message"], r.headers
    assert production(env, promo) == 1
    listed = get(env, "/v1/models", ACME)
    assert listed.status_code == 200


def test_a_base_directory_names_the_same_base_from_any_working_directory(tmp_path, monkeypatch):
    from tiny import save_tiny

    from loraops.models import resolve_base

    monkeypatch.chdir(tmp_path)
    info = resolve_base("mybase/" if save_tiny(tmp_path / "mybase", "llama") else "")
    assert info.name == "mybase" and info.path.is_absolute()
    monkeypatch.chdir(tmp_path.parent)                    # "mybase" means nothing here; its path still does
    assert resolve_base(str(info.path)).fingerprint == info.fingerprint
