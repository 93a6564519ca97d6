"""The dashboard: server-rendered pages under /ui, mounted by the API app.

Pages: adapters per tenant; one adapter's versions with stages, lineage, eval results across
versions and training curves; live serving stats; fine-tuning jobs, each with its status, events
and loss curve (refreshed every 2 seconds while the job runs). Promote and rollback go through a confirmation
page and are audited by the registry with the actor "dashboard:admin".

Every POST is checked against cross-site requests twice: an Origin header, when the browser sends
one, must be this server's own (Host); and the forms of a signed-in session carry a CSRF token
bound to its cookie (auth.py). The session cookie is also SameSite=Strict and HttpOnly.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from loraops.errors import LoraOpsError
from loraops.web.auth import COOKIE, TTL_S, DashboardKeys
from loraops.web.charts import line_chart_svg
from loraops.web.source import AdapterView, DashboardSource, JobView

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def eval_chart(adapter: AdapterView) -> str:
    evals = [(v.version, v.eval) for v in adapter.versions if v.eval]
    series = {"domain gain": [(n, e["domain_gain"]) for n, e in evals if "domain_gain" in e],
              "forgetting": [(n, e["forgetting"]) for n, e in evals if "forgetting" in e]}
    return line_chart_svg({k: v for k, v in series.items() if v}, "Domain gain vs forgetting by version",
                          x_label="version")


def loss_chart(adapter: AdapterView) -> str:
    latest = adapter.versions[0] if adapter.versions else None
    series = {}
    if latest is not None:
        series = {"train loss": latest.loss_curve, "val loss": latest.val_loss_curve}
    title = f"Training curves, version {latest.version}" if latest else "Training curves"
    return line_chart_svg({k: v for k, v in series.items() if v}, title, x_label="step")


def job_loss_chart(job: JobView) -> str:
    series = {"train loss": job.loss_curve, "val loss": job.val_loss_curve}
    return line_chart_svg({k: v for k, v in series.items() if v}, f"Loss, {job.id}", x_label="step")


def dashboard_router(source: DashboardSource, keys: DashboardKeys) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def role(request: Request) -> str | None:
        return keys.verify(request.cookies.get(COOKIE))

    def page(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
        session = request.cookies.get(COOKIE)
        return templates.TemplateResponse(request, template, {"role": keys.verify(session),
                                                              "csrf": keys.csrf_token(session), **ctx},
                                          status_code=status)

    def denied(request: Request) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    def foreign(request: Request, csrf: str | None = None) -> HTMLResponse | None:
        """A 403 page for a cross-site POST (wrong Origin, or a missing/wrong CSRF token when `csrf`
        is checked); None for a request from our own pages."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
            return page(request, "error.html", status=403, message="Cross-site request refused.")
        if csrf is not None and not keys.check_csrf(request.cookies.get(COOKIE), csrf):
            return page(request, "error.html", status=403,
                        message="This form has expired or was not sent by the dashboard; reload the page.")
        return None

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return page(request, "login.html")

    @router.post("/login")
    def login(request: Request, key: str = Form(...)):
        if (refused := foreign(request)) is not None:
            return refused
        granted = keys.role_for(key)
        if granted is None:
            return page(request, "login.html", status=401, error="That key is not valid for the dashboard.")
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(COOKIE, keys.issue(granted), max_age=TTL_S, httponly=True, samesite="strict")
        return response

    @router.post("/logout")
    def logout(request: Request, csrf: str = Form("")):
        if (refused := foreign(request, csrf)) is not None:
            return refused
        keys.revoke(request.cookies.get(COOKIE))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @router.get("", response_class=HTMLResponse)
    def home(request: Request):
        if role(request) is None:
            return denied(request)
        by_tenant: dict[str, list[AdapterView]] = {}
        for a in source.adapters():
            by_tenant.setdefault(a.tenant or "(no tenant)", []).append(a)
        return page(request, "home.html", tenants=dict(sorted(by_tenant.items())), serving=source.serving())

    @router.get("/adapters/{name}", response_class=HTMLResponse)
    def adapter_page(request: Request, name: str, message: str | None = None):
        if role(request) is None:
            return denied(request)
        adapter = source.adapter(name)
        if adapter is None:
            return page(request, "error.html", status=404, message=f"No adapter named {name!r}.")
        return page(request, "adapter.html", adapter=adapter, eval_chart=eval_chart(adapter),
                    loss_chart=loss_chart(adapter), message=message)

    @router.get("/adapters/{name}/confirm", response_class=HTMLResponse)
    def confirm(request: Request, name: str, action: str, version: int | None = None, stage: str = "production"):
        if role(request) != "admin":
            return page(request, "error.html", status=403, message="Promote and rollback need the admin key.")
        return page(request, "confirm.html", name=name, action=action, version=version, stage=stage)

    @router.post("/adapters/{name}/promote")
    def promote(request: Request, name: str, version: int = Form(...), stage: str = Form("production"),
                reason: str = Form(""), csrf: str = Form("")):
        if (refused := foreign(request, csrf)) is not None:
            return refused
        if role(request) != "admin":
            return page(request, "error.html", status=403, message="Promote needs the admin key.")
        try:
            source.promote(name, version, stage, actor="dashboard:admin", reason=reason or None)
            message = f"Promoted {name}@{version} to {stage}."
        except LoraOpsError as e:
            message = f"Promotion refused: {e}"
        return RedirectResponse(f"/ui/adapters/{name}?message={message}", status_code=303)

    @router.post("/adapters/{name}/rollback")
    def rollback(request: Request, name: str, stage: str = Form("production"), csrf: str = Form("")):
        if (refused := foreign(request, csrf)) is not None:
            return refused
        if role(request) != "admin":
            return page(request, "error.html", status=403, message="Rollback needs the admin key.")
        try:
            version = source.rollback(name, stage, actor="dashboard:admin")
            message = f"Rolled {name} back: {stage} is version {version} again."
        except LoraOpsError as e:
            message = f"Rollback refused: {e}"
        return RedirectResponse(f"/ui/adapters/{name}?message={message}", status_code=303)

    @router.get("/jobs", response_class=HTMLResponse)
    def jobs(request: Request):
        if role(request) is None:
            return denied(request)
        return page(request, "jobs.html", jobs=source.jobs())

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str):
        if role(request) is None:
            return denied(request)
        job = source.job(job_id)
        if job is None:
            return page(request, "error.html", status=404, message=f"No fine-tuning job {job_id!r}.")
        return page(request, "job.html", job=job, loss_chart=job_loss_chart(job))

    @router.get("/serving", response_class=HTMLResponse)
    def serving(request: Request):
        if role(request) is None:
            return denied(request)
        return page(request, "serving.html", serving=source.serving())

    return router
