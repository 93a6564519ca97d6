"""The dashboard in headless Chromium (Debian's), against a real registry served over loopback."""

import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from loraops.lora import LoRAConfig, extract, inject, save_adapter
from loraops.models import fingerprint_module
from loraops.registry import Registry
from loraops.web import DashboardKeys, dashboard_router
from loraops.web.registry_source import RegistrySource
from browser import HAVE_CHROMIUM, chromium_page, sign_in
from tiny import tiny_llama

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
pytestmark = pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium is not installed")


def _push_versions(registry, tmp_path):
    model = tiny_llama()
    fp = fingerprint_module(model)
    registry.register_base(fp, "tiny-llama")
    cfg = LoRAConfig(r=2, target_modules=["q_proj"], init="random")
    inject(model, cfg)
    for v, (gain, forgetting) in enumerate([(0.10, 0.02), (0.25, 0.04), (0.31, 0.03)], start=1):
        metrics = {"train_loss": 1.5 - 0.2 * v, "val_loss": 1.6 - 0.2 * v,
                   "loss_curve": [[s, 2.0 - 0.1 * s * v / 10] for s in range(0, 50, 5)],
                   "val_loss_curve": [[s, 2.1 - 0.1 * s * v / 10] for s in range(0, 50, 10)]}
        d = save_adapter(extract(model, cfg, meta={"base_fingerprint": fp, "metrics": metrics}), tmp_path / f"v{v}")
        registry.push(d, "acme-invoices", tenant="acme")
        registry.record_eval("acme-invoices", v, {"domain_gain": gain, "primary_metric": "field_accuracy",
                                                  "forgetting": {"score": forgetting, "kl_mean": 0.01}})
    registry.promote("acme-invoices", 1)
    registry.promote("acme-invoices", 2)


@pytest.fixture
def dashboard(tmp_path):
    registry = Registry(home=tmp_path / "home")
    _push_versions(registry, tmp_path)
    app = FastAPI()
    keys = DashboardKeys(admin_keys=["sk-admin-test"], read_keys=["sk-read-test"])
    app.include_router(dashboard_router(RegistrySource(registry, stats=lambda: {"tokens_per_s": 12.5}), keys))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", registry
    server.should_exit = True
    thread.join(timeout=10)
    registry.close()


@pytest.fixture
def page():
    with chromium_page() as p:
        yield p


def test_unauthenticated_access_is_refused(dashboard, page):
    url, _ = dashboard
    for path in ("/ui", "/ui/adapters/acme-invoices", "/ui/serving"):
        page.goto(url + path)
        assert page.url.endswith("/ui/login"), path
    sign_in(page, url, "sk-wrong")
    assert "not valid" in page.inner_text("#error")
    response = page.request.post(f"{url}/ui/adapters/acme-invoices/rollback", form={"stage": "production"})
    assert response.status == 403


def test_pages_and_charts_render_real_registry_data(dashboard, page):
    url, _ = dashboard
    sign_in(page, url, "sk-read-test")
    assert "acme-invoices" in page.inner_text("table.adapters") and "production: v2" in page.content()
    page.click("text=acme-invoices")
    series = page.locator("svg.chart polyline.series")
    assert series.count() == 4  # domain gain + forgetting across versions; train + val loss curves
    assert page.locator('polyline[data-series="domain gain"]').get_attribute("points").count(",") == 3
    assert page.locator("table.versions tr").count() == 4
    assert page.locator("a.promote").count() == 0  # read-only key: no actions
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-adapter.png"), full_page=True)


def test_promote_and_rollback_with_confirmation_are_audited(dashboard, page):
    url, registry = dashboard
    sign_in(page, url, "sk-admin-test")
    page.goto(f"{url}/ui/adapters/acme-invoices")
    page.click("#v3 a.promote")
    assert "Promote acme-invoices@3" in page.inner_text("main")
    page.fill("#reason", "better extraction")
    page.click("#confirm")
    assert "Promoted acme-invoices@3" in page.inner_text("#message")
    assert registry.resolve("acme-invoices").version == 3
    page.click("#rollback")
    page.click("#confirm")
    assert "production is version 2 again" in page.inner_text("#message")
    assert registry.resolve("acme-invoices").version == 2
    actions = [(e.action, e.actor) for e in registry.audit(limit=2)]
    assert actions == [("rollback", "dashboard:admin"), ("promote", "dashboard:admin")]
