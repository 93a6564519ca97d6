"""The dashboard of the real app: `loraops serve --registry` in a subprocess, with the promotion gate
it builds and the metrics of the traffic it serves, driven in headless Chromium.

The registry holds three versions of one adapter with stored evaluations (numbers chosen, the gate
is the server's own): v1 in production, v2 better than v1, v3 with too much forgetting. The test
sends real requests, reads them back on the serving page, has the gate refuse v3 and pass v2 from
the browser, and sees the server answer with v2 after its next registry poll.
"""

import sys
import time
from pathlib import Path

import openai
import pytest
from browser import HAVE_CHROMIUM, chromium_page, sign_in
from eval_reports import stored_eval
from tiny import save_tiny, tiny_llama

from loraops.lora import save_adapter
from loraops.models import fingerprint_dir
from loraops.registry import Registry

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402
from lora_factory import random_adapter  # noqa: E402

pytestmark = pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium is not installed")
ADMIN, ACME = "sk-admin-0123456789", "sk-acme-0123456789"
PROMPT = "Invoice number"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    base = save_tiny(d / "tiny", "llama")
    fp = fingerprint_dir(base)
    registry = Registry(home=d / "home")
    registry.register_base(fp, "tiny")
    model = tiny_llama(0)
    for version, (acc, ppl) in enumerate([(0.5, 10.0), (0.8, 10.2), (0.9, 40.0)], start=1):
        adapter = random_adapter(model, 4, ["q_proj", "v_proj"], seed=version, meta={"base_fingerprint": fp})
        registry.push(save_adapter(adapter, d / f"v{version}"), "acme-invoices", tenant="acme")
        registry.record_eval("acme-invoices", version, stored_eval(fp, 0.0, acc, ppl))
    registry.promote("acme-invoices", 1)
    registry.close()
    (d / "tenants.toml").write_text(f'[tenants.acme]\napi_keys = ["{ACME}"]\nadapters = ["acme-invoices"]\n')
    server = Server(["--base", str(base), "--registry", "--registry-poll", "0.5", "--tenants", str(d / "tenants.toml"),
                     "--admin-key", ADMIN], d / "server.log", env={"LORAOPS_HOME": str(d / "home")})
    yield server, d / "home"
    server.stop()


def answer(server, model: str) -> str:
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=ACME, max_retries=0, timeout=30)
    return c.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text


def serving_numbers(page) -> dict[str, float]:
    rows = page.locator("table.serving tr")
    return {rows.nth(i).locator("th").inner_text(): float(rows.nth(i).locator("td").inner_text())
            for i in range(rows.count())}


def test_the_served_dashboard_shows_live_traffic_and_gates_promotions(served):
    server, home = served
    v1, v2 = answer(server, "acme-invoices"), answer(server, "acme-invoices@2")
    assert v1 == answer(server, "acme-invoices@1") != v2                 # production is v1
    with chromium_page() as page:
        sign_in(page, server.url, ADMIN)
        assert "acme-invoices" in page.inner_text("table.adapters") and "production: v1" in page.content()

        page.goto(server.url + "/ui/serving")
        live = serving_numbers(page)
        assert live["completion tokens"] >= 3 and live["resident adapters"] >= 1
        assert live["mean TTFT (s)"] > 0

        page.goto(server.url + "/ui/adapters/acme-invoices")               # the gate refuses v3 (forgetting)
        page.click("#v3 a.promote")
        page.click("#confirm")
        assert "Promotion refused" in page.inner_text("#message") and "forgetting" in page.inner_text("#message")

        page.click("#v2 a.promote")                                         # and lets v2 through
        page.fill("#reason", "better extraction")
        page.click("#confirm")
        assert "Promoted acme-invoices@2" in page.inner_text("#message")

        deadline = time.time() + 30                                         # the server's next registry poll
        while answer(server, "acme-invoices") != v2:
            assert time.time() < deadline, "the server kept serving v1 after the promotion"
            time.sleep(0.5)
        page.goto(server.url + "/ui/serving")
        assert serving_numbers(page)["completion tokens"] > live["completion tokens"]
    registry = Registry(home=home)
    try:
        assert registry.resolve("acme-invoices").version == 2
        last = registry.audit(limit=1)[0]
        assert (last.action, last.actor) == ("promote", "dashboard:admin")
    finally:
        registry.close()
