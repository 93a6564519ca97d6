"""The fine-tuning API as a tenant uses it: the real server on 127.0.0.1, a real `loraops worker`
process, the official openai client, a tiny random Llama.

The training set teaches one answer ("billing high priority") to ticket-routing questions. On this
tiny base the recipe below (all-linear rank 8, learning rate x100, 10 epochs of batch 1: 50 steps)
makes the adapter answer the probe with the taught words and gain on the validation split, which
the random base cannot (F1 0 -> 1 when measured), with no forgetting: so the promotion gate passes.
A learning rate x1000 over-trains it: the adapter loses the answer again and the gate refuses it
(a random base has no general ability to forget, so on this base the gate's domain rule is the one
that trips; tests/integration/test_eval_gate.py covers the forgetting rule on a pretrained one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import LORAOPS, Server  # noqa: E402
from tiny import save_tiny, tiny_tokenizer  # noqa: E402

from loraops.errors import NotFoundError  # noqa: E402
from loraops.finetune.uploads import check_training_file  # noqa: E402
from loraops.registry import Registry  # noqa: E402

ACME, BETA, TIGHT, PAGER = "sk-acme-0123456789", "sk-beta-0123456789", "sk-tight-0123456789", "sk-pager-0123456789"
ADMIN = "sk-admin-0123456789"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIGHT_BYTES, TIGHT_TOKENS = 12_000, 5_000
MAX_UPLOAD = 100_000
TENANTS = f"""
[tenants.acme]
api_keys = ["{ACME}"]
allow_base = true

[tenants.beta]
api_keys = ["{BETA}"]
allow_base = true

[tenants.tight]
api_keys = ["{TIGHT}"]
allow_base = true
fine_tuning = {{ max_concurrent_jobs = 1, max_file_bytes = {TIGHT_BYTES}, max_tokens_per_job = {TIGHT_TOKENS} }}

[tenants.pager]
api_keys = ["{PAGER}"]
allow_base = true
fine_tuning = {{ max_concurrent_jobs = 10 }}
"""
ANSWER = "billing high priority"
PROBE = [{"role": "user", "content": "Route ticket number 99 please"}]
HP = {"n_epochs": 10, "batch_size": 1, "learning_rate_multiplier": 100}
OPTIONS = {"rank": 8, "targets": "all-linear", "checkpoint_every": 5}
TERMINAL = ("succeeded", "failed", "cancelled")


def tickets(path: Path, n: int = 40) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Route ticket number {i} please"},
        {"role": "assistant", "content": ANSWER}]}) + "\n" for i in range(n)))
    return path


class WorkerProcess:
    """`loraops worker` with a 3-second lease, so a killed worker's job is taken over quickly."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log = env, log
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([LORAOPS, "worker", "--lease-seconds", "3", "--poll-seconds", "0.2",
                                          "--threads", "1"], env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune")
    base = save_tiny(d / "tiny", "llama")
    (d / "tenants.toml").write_text(TENANTS)
    env = {**os.environ, "LORAOPS_HOME": str(d / "home"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("LORAOPS_DB_URL", None)
    server = Server(["--base", str(base), "--registry", "--tenants", str(d / "tenants.toml"), "--admin-key", ADMIN,
                     "--max-slots", "4",
                     "--max-rank", "16", "--max-upload-bytes", str(MAX_UPLOAD)], d / "server.log", env=env)
    worker = WorkerProcess(env, d / "worker.log")
    yield {"url": server.url, "home": d / "home", "worker": worker, "data": tickets(d / "tickets.jsonl"), "dir": d}
    worker.stop()
    server.stop()


def client(world, key=ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=world["url"] + "/v1", api_key=key, max_retries=0, timeout=60)


def upload(world, key=ACME, path=None):
    with open(path or world["data"], "rb") as f:
        return client(world, key).files.create(file=f, purpose="fine-tune")


def create(world, file_id, key=ACME, hp=HP, **options):
    return client(world, key).fine_tuning.jobs.create(
        model="tiny", training_file=file_id, seed=7, hyperparameters=hp, suffix=options.pop("suffix", None),
        extra_body={"loraops": {**OPTIONS, **options}})


def wait(world, job_id, key=ACME, until=TERMINAL, timeout=240):
    c, seen, deadline = client(world, key), [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.status in until:
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"{job_id} still {seen[-1]} after {timeout}s; seen {seen}")


def events(world, job_id, key=ACME) -> list:
    """All of a job's events, oldest first (through the client's auto-pagination)."""
    return list(reversed(list(client(world, key).fine_tuning.jobs.list_events(job_id, limit=50))))


def chat(world, model, key=ACME) -> str:
    r = client(world, key).chat.completions.create(model=model, messages=PROBE, max_tokens=8, temperature=0)
    return r.choices[0].message.content


def workdir(world, job_id: str) -> Path:
    return world["home"] / "finetune" / "jobs" / job_id


def job_processes(job_id: str) -> list[int]:
    """pids of job processes (`python -m loraops.finetune.pipeline JOB …`) still alive."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"loraops.finetune.pipeline" in cmdline and job_id.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code", "param"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def http(world, method, path, key=ACME, **kw) -> httpx.Response:
    return httpx.request(method, world["url"] + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kw)


@pytest.fixture(scope="module")
def reference(world):
    """The recipe's job, run once: uploaded, created with auto_promote, polled to the end."""
    f = upload(world)
    job = create(world, f.id, suffix="tickets", auto_promote=True)
    assert job.status == "validating_files" and job.fine_tuned_model is None
    done, seen = wait(world, job.id)
    return {"file": f, "job": done, "seen": seen}


# ---- bad input ----------------------------------------------------------------------------------


def test_a_bad_file_is_refused_with_its_line_numbers_and_nothing_is_stored(world, tmp_path):
    before = [f.id for f in client(world).files.list()]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n{"messages": [{"role": "user", "content": "no answer"}]}\n')
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(openai.BadRequestError) as e:
        upload(world, path=bad)
    err = e.value.body
    assert err["code"] == "invalid_file" and err["param"] == "file"
    assert "line 2: bad JSON" in err["message"]
    assert "line 3: the last message must be from the assistant" in err["message"]
    assert [f.id for f in client(world).files.list()] == before
    assert not (world["home"] / "files" / "sha256" / digest[:2] / digest[2:]).exists()  # nor its bytes

    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"text": "x" * (MAX_UPLOAD + 10)}) + "\n")
    with open(big, "rb") as fh:
        r = http(world, "POST", "/v1/files", files={"file": ("big.jsonl", fh)}, data={"purpose": "fine-tune"})
    assert_openai_error(r, 413, "file", "file_too_large")
    with open(world["data"], "rb") as fh:
        r = http(world, "POST", "/v1/files", files={"file": ("t.jsonl", fh)}, data={"purpose": "assistants"})
    assert_openai_error(r, 400, "purpose")
    assert [f.id for f in client(world).files.list()] == before


@pytest.mark.parametrize("change, status, param", [
    ({"hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": "large"}}, 400, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": -2}}, 400, "hyperparameters.learning_rate_multiplier"),
    ({"method": {"type": "dpo"}}, 400, "method.type"),
    ({"model": "no-such-base"}, 400, "model"),
    ({"model": "ft:tiny:acme:x:ftjob-doesnotexist"}, 400, "model"),
    ({"training_file": "file-doesnotexist"}, 400, "training_file"),
    ({"suffix": "Not Valid"}, 400, "suffix"),
    ({"loraops": {"rank": 0}}, 400, "loraops.rank"),
    ({"loraops": {"rank": 32}}, 400, "loraops.rank"),                  # above the server's --max-rank 16
])
def test_bad_job_requests_get_the_right_4xx_with_an_openai_error_body(world, change, status, param):
    f = upload(world, key=BETA)
    r = http(world, "POST", "/v1/fine_tuning/jobs", key=BETA, json={"model": "tiny", "training_file": f.id, **change})
    assert_openai_error(r, status, param)
    assert client(world, BETA).fine_tuning.jobs.list().data == []


def test_unknown_base_through_the_client_is_a_bad_request(world):
    f = upload(world, key=BETA)
    with pytest.raises(openai.BadRequestError) as e:
        client(world, BETA).fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.body["code"] == "model_not_available"


# ---- the whole flow ---------------------------------------------------------------------------


def test_upload_train_evaluate_register_and_serve_through_the_openai_client(world, reference):
    c, job, f = client(world), reference["job"], reference["file"]
    assert job.status == "succeeded", job.error
    assert reference["seen"][0] in ("validating_files", "queued", "running") and reference["seen"][-1] == "succeeded"
    assert [s for s in ["validating_files", "queued", "running", "succeeded"] if s in reference["seen"]] == \
        reference["seen"]
    assert job.fine_tuned_model == f"ft:tiny:acme:tickets:{job.id}" and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 10 and job.finished_at >= job.created_at
    assert c.files.content(f.id).read() == world["data"].read_bytes()

    messages = [e.message for e in events(world, job.id)]
    first_loss = next(i for i, m in enumerate(messages) if m.startswith("Step 1: training loss"))
    for i, fragment in enumerate(["Created fine-tuning job", "Files validated", "Fine-tuning job started",
                                  "Curated the training data: kept 40 of 40 lines"]):
        assert fragment in messages[i], messages[:6]
    assert first_loss == 4
    # 40 tickets packed (their shared instruction once per row) into 5 rows an epoch: batch 1, 10 epochs
    steps = 50
    assert any(m.startswith(f"Step {steps}: training loss") for m in messages)
    assert any(m.startswith("Evaluated against the base: f1") for m in messages)
    assert any(m.startswith("Promotion gate passed") and m.endswith("promoted to production") for m in messages)
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in events(world, job.id) if e.type == "metrics" and "train_loss" in (e.data or {})]
    assert [e.data["step"] for e in metrics] == list(range(1, steps + 1))
    assert metrics[-1].data["train_loss"] < metrics[0].data["train_loss"]

    checkpoints = list(c.fine_tuning.jobs.checkpoints.list(job.id))
    assert [k.step_number for k in checkpoints] == [steps, steps - 5, steps - 10, steps - 15]  # final + last three
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{steps}"
    assert checkpoints[0].metrics.train_loss == pytest.approx(metrics[-1].data["train_loss"])

    adapted, base = chat(world, job.fine_tuned_model), chat(world, "tiny")
    assert adapted != base and adapted.startswith("billing"), (adapted, base)
    assert chat(world, checkpoints[0].fine_tuned_model_checkpoint) == adapted  # the final step's checkpoint
    assert chat(world, checkpoints[-1].fine_tuned_model_checkpoint)            # an earlier one is servable too
    assert job.fine_tuned_model in [m.id for m in c.models.list()]

    (results,) = job.result_files
    lines = c.files.content(results).text.splitlines()
    assert lines[0] == "step,train_loss,valid_loss,learning_rate,tokens,tokens_per_s" and len(lines) == steps + 1

    assert [p.name for p in workdir(world, job.id).iterdir()] == ["job.log"]  # the tenant's data is gone
    with Registry(url=f"sqlite:///{world['home'] / 'registry.db'}", home=world["home"]) as registry:
        name, version = job.model_extra["loraops"]["registry_version"].split("@")
        v = registry.resolve(f"{name}@{version}")
        assert registry.resolve(f"{name}@production").version == v.version  # auto_promote + a passing gate
        assert v.created_by == f"finetune:{job.id}" and v.tenant == "acme"
        assert v.dataset_digest == job.model_extra["loraops"]["curation"]["dataset_sha256"]
        assert v.hyperparameters["epochs"] == 10 and v.hyperparameters["seed"] == 7
        assert v.eval_results["domain_gain"] > 0


def test_another_tenant_gets_404_for_the_file_the_job_and_the_model(world, reference):
    beta, job, f = client(world, BETA), reference["job"], reference["file"]
    for call in (lambda: beta.files.retrieve(f.id), lambda: beta.files.content(f.id),
                 lambda: beta.files.delete(f.id), lambda: beta.fine_tuning.jobs.retrieve(job.id),
                 lambda: beta.fine_tuning.jobs.list_events(job.id), lambda: beta.fine_tuning.jobs.cancel(job.id),
                 lambda: beta.fine_tuning.jobs.checkpoints.list(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as theirs:
        chat(world, job.fine_tuned_model, key=BETA)
    unknown = job.fine_tuned_model.replace(job.id, "ftjob-" + "x" * 24)
    with pytest.raises(openai.NotFoundError) as missing:
        chat(world, unknown)
    same = missing.value.body["message"].replace(unknown, job.fine_tuned_model)
    assert theirs.value.body == {**missing.value.body, "message": same}
    assert job.fine_tuned_model not in [m.id for m in beta.models.list()]
    theirs, missing = (http(world, "GET", f"/v1/models/{m}", key=BETA) for m in (job.fine_tuned_model, unknown))
    assert_openai_error(theirs, 404, "model", "model_not_found")
    assert theirs.json() == json.loads(missing.text.replace(unknown, job.fine_tuned_model))
    assert client(world).models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    r = http(world, "POST", "/v1/fine_tuning/jobs", key=BETA, json={"model": job.fine_tuned_model,
                                                                   "training_file": upload(world, BETA).id})
    assert_openai_error(r, 400, "model", "model_not_available")
    r = http(world, "POST", "/v1/fine_tuning/jobs", key=BETA, json={"model": "tiny", "training_file": f.id})
    assert_openai_error(r, 400, "training_file")


def test_the_objects_match_the_openapi_document(world, reference):
    """A finished job's objects, as the server sends them, against the schemas of docs/openapi.json
    (the fuzz in tests/hostile sees only objects of jobs that never ran)."""
    from jsonschema import Draft202012Validator

    from loraops.serve.api import openapi_schema

    doc = openapi_schema()

    def check(path: str, component: str, status: int = 200) -> None:
        r = http(world, "GET", path)
        assert r.status_code == status, r.text
        Draft202012Validator({"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
                             ).validate(r.json())

    job = reference["job"]
    check(f"/v1/fine_tuning/jobs/{job.id}", "FineTuningJob")
    check("/v1/fine_tuning/jobs?limit=100", "JobList")
    check(f"/v1/fine_tuning/jobs/{job.id}/events?limit=1000", "EventList")
    check(f"/v1/fine_tuning/jobs/{job.id}/checkpoints", "CheckpointList")
    check(f"/v1/files/{job.result_files[0]}", "FileObject")
    check("/v1/files", "FileList")
    check(f"/v1/models/{job.fine_tuned_model}", "Model")


def test_cancelling_a_succeeded_job_is_refused_and_changes_nothing(world, reference):
    c, job = client(world), reference["job"]
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.cancel(job.id)
    assert e.value.body["param"] == "fine_tuning_job_id" and "has finished (succeeded)" in e.value.body["message"]
    assert c.fine_tuning.jobs.retrieve(job.id) == job
    assert chat(world, job.fine_tuned_model).startswith("billing")


# ---- resume, cancel -----------------------------------------------------------------------------


def test_a_sigkilled_worker_leaves_a_job_that_resumes_to_the_same_adapter(world, reference):
    job = create(world, upload(world).id, suffix="resumed")   # the reference's recipe and seed
    checkpoints = workdir(world, job.id) / "run" / "checkpoints"
    deadline = time.monotonic() + 180
    while not any(checkpoints.glob("step-*")):
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.005)
    world["worker"].kill()
    deadline = time.monotonic() + 10
    while job_processes(job.id):                              # the trainer died with its worker
        assert time.monotonic() < deadline, "the job process outlived its SIGKILLed worker"
        time.sleep(0.05)
    assert not (checkpoints.parent / "adapter").exists(), "training had finished before the kill"
    assert client(world).fine_tuning.jobs.retrieve(job.id).status == "running"
    world["worker"].start()
    done, _ = wait(world, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in events(world, job.id)]
    assert any(m.startswith("Resuming the job") for m in messages)
    assert "Resuming training from the newest checkpoint" in messages
    with Registry(url=f"sqlite:///{world['home'] / 'registry.db'}", home=world["home"]) as registry:
        a, b = (load_file(registry.fetch(j.model_extra["loraops"]["registry_version"]) / "adapter_model.safetensors")
                for j in (reference["job"], done))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def long_job(world):
    """A job of 350 steps, running: the dashboard watches it, then it is cancelled."""
    job = create(world, upload(world).id, hp={"n_epochs": 50, "batch_size": 1, "learning_rate_multiplier": 1})
    deadline = time.monotonic() + 180
    while not any(e.type == "metrics" for e in client(world).fine_tuning.jobs.list_events(job.id, limit=5)):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    return job


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_the_dashboard_shows_jobs_and_a_live_loss_curve(world, long_job):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.goto(f"{world['url']}/ui/login")
        page.fill("#key", ADMIN)
        page.click("#signin")
        page.goto(f"{world['url']}/ui/jobs")
        row = page.locator(f"tr#{long_job.id}")
        assert "acme" in row.inner_text() and "running" in row.locator(".status").inner_text()
        row.locator("a").click()
        assert page.inner_text("#status") == "running"
        curve = page.locator('polyline[data-series="train loss"]')

        def points() -> int:
            return len(curve.get_attribute("points").split())

        before = points()
        page.wait_for_event("load", timeout=10_000)          # the page refreshes itself while the job runs
        assert points() > before >= 1
        assert "training loss" in page.inner_text("table.events")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)
        browser.close()


def test_cancel_stops_the_job_within_seconds_and_frees_the_worker(world, long_job):
    c = client(world)
    cancelled_at = time.monotonic()
    assert c.fine_tuning.jobs.cancel(long_job.id).status == "cancelled"
    while job_processes(long_job.id):
        assert time.monotonic() - cancelled_at < 10, "the job process still runs 10 s after the cancel"
        time.sleep(0.1)
    steps = len([e for e in events(world, long_job.id) if e.type == "metrics"])
    time.sleep(1.0)
    assert [p.name for p in workdir(world, long_job.id).iterdir()] == ["job.log"]
    assert len([e for e in events(world, long_job.id) if e.type == "metrics"]) == steps < 350
    assert c.fine_tuning.jobs.retrieve(long_job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(long_job.id)
    nxt = create(world, long_job.training_file, hp={"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1})
    running, _ = wait(world, nxt.id, until=("running",) + TERMINAL, timeout=60)  # the one worker took it
    assert running.status in ("running", "succeeded")
    if running.status == "running":
        c.fine_tuning.jobs.cancel(nxt.id)


# ---- quotas, pagination -------------------------------------------------------------------------


def test_quotas_answer_429_for_usage_and_400_for_a_job_too_large(world):
    tight = client(world, TIGHT)
    size = world["data"].stat().st_size
    assert 2 * size <= TIGHT_BYTES < 3 * size
    upload(world, TIGHT)
    f = upload(world, TIGHT)
    with pytest.raises(openai.RateLimitError) as e:
        upload(world, TIGHT)
    assert e.value.body["code"] == "quota_exceeded" and f"quota of {TIGHT_BYTES:,}" in e.value.body["message"]

    tokens = check_training_file(world["data"], tiny_tokenizer()).tokens
    assert tokens < TIGHT_TOKENS
    too_many = TIGHT_TOKENS // tokens + 1
    with pytest.raises(openai.BadRequestError) as e:
        tight.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": too_many})
    assert e.value.body["code"] == "quota_exceeded" and f"{tokens * too_many:,} tokens" in e.value.body["message"]

    job = tight.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 1})
    with pytest.raises(openai.RateLimitError) as e:
        tight.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 1})
    assert "have not finished" in e.value.body["message"]
    tight.fine_tuning.jobs.cancel(job.id)
    freed = tight.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 1})
    tight.fine_tuning.jobs.cancel(freed.id)


def test_lists_page_with_has_more_and_after_as_the_client_expects(world):
    pager = client(world, PAGER)
    files = [upload(world, PAGER).id for _ in range(3)]
    jobs = [pager.fine_tuning.jobs.create(model="tiny", training_file=files[0]).id for _ in range(3)]
    for j in jobs:
        pager.fine_tuning.jobs.cancel(j)
    page = pager.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [jobs[2], jobs[1]] and page.has_more
    rest = pager.fine_tuning.jobs.list(limit=2, after=page.data[-1].id)
    assert [j.id for j in rest.data] == [jobs[0]] and not rest.has_more
    assert [j.id for j in pager.fine_tuning.jobs.list(limit=2)] == jobs[::-1]           # auto-pagination
    assert [f.id for f in pager.files.list(limit=2)] == files[::-1]
    assert [f.id for f in pager.files.list(order="asc", limit=1)] == files
    one = pager.fine_tuning.jobs.list_events(jobs[0], limit=1)
    assert len(one.data) == 1 and one.has_more and one.data[0].message == "Job cancelled"
    assert pager.files.delete(files[2]).deleted
    with pytest.raises(openai.NotFoundError):
        pager.files.retrieve(files[2])
    assert_openai_error(http(world, "GET", "/v1/fine_tuning/jobs?limit=0", key=PAGER), 400, "limit")


# ---- the gate -----------------------------------------------------------------------------------


def test_auto_promote_is_blocked_by_the_gate_for_an_over_trained_job(world):
    job = create(world, upload(world).id, hp={"n_epochs": 5, "batch_size": 1, "learning_rate_multiplier": 1000},
                 suffix="overtrained", auto_promote=True)
    done, _ = wait(world, job.id)
    assert done.status == "succeeded", done.error
    gate = done.model_extra["loraops"]["gate"]
    assert gate == {**gate, "passed": False, "auto_promote": True, "promoted": False}
    (verdict,) = [e for e in events(world, job.id) if e.message.startswith("Promotion gate")]
    assert verdict.level == "warn" and "refused" in verdict.message and verdict.message.endswith("not promoted")
    with Registry(url=f"sqlite:///{world['home'] / 'registry.db'}", home=world["home"]) as registry:
        with pytest.raises(NotFoundError):
            registry.resolve("acme-overtrained@production")
    assert chat(world, done.fine_tuned_model)  # not in production, but servable by its tenant
