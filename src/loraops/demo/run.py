"""`loraops demo`: the whole life cycle on the default base, end to end, for two tenants.

generate data -> curate (report) -> train one adapter per tenant -> evaluate against the base
(domain gain + forgetting) -> register, gate and promote -> serve with a tenants file -> query
each adapter with the official `openai` client, before (base) and after (adapter) -> leave the
server and dashboard running until Ctrl-C.

Stopping: the server is a child process in the demo's process group, so a Ctrl-C in the terminal
reaches both. Ctrl-C (SIGINT), SIGTERM or SIGHUP while the server runs prints "stopping the server",
stops it (SIGTERM: a graceful uvicorn shutdown, then the engine; SIGKILL after 15 s), waits for it
and exits with code 0: that is the normal way to leave a finished demo. An interrupt before the
demo finished (while the server starts or is queried) stops the server too, then exits with 130, as
an interrupt in the earlier steps does. A second Ctrl-C while stopping kills the server at once.
Everything the demo made stays in the workdir (data, runs, registry, tenants file); a rerun reuses
the trained adapters.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.table import Table

from loraops.atomic import write_text
from loraops.demo import tasks
from loraops.errors import LoraOpsError
from loraops.tune.space import Recipe

console = Console()


@dataclass(frozen=True)
class TenantTask:
    tenant: str
    task: str          # a generator in demo/tasks.py
    adapter: str       # registry name
    examples: int      # raw records generated (curation drops the planted duplicates)
    recipe: Recipe     # how its adapter is trained (found with `loraops tune`, docs/benchmarks.md)


TENANTS = (TenantTask("acme", "invoices", "acme-invoices", 400,
                      Recipe(rank=8, targets="all-linear", lr=1e-3, steps=24, replay=0.1)),
           TenantTask("globex", "tickets", "globex-support", 420,
                      Recipe(rank=16, targets="all-linear", lr=2e-3, steps=30, replay=0.1)))


@dataclass
class DemoOptions:
    workdir: Path
    base: str = "gemma-3-270m"
    steps: int | None = None  # overrides every recipe's step count (tests, quick looks)
    batch_size: int = 2
    seq_len: int = 512
    val_fraction: float = 0.2  # of the curated records: 70 and 72 validation examples
    eval_examples: int | None = None  # None: every validation example
    eval_batch_size: int = 16  # rows per generation batch (decoding on CPU is memory-bound: wider is cheaper)
    port: int = 8000
    serve: bool = True  # False: stop after the queries (tests, CI, timing runs)
    gate: bool = True   # promotion gate (domain gain + forgetting); off only for toy bases


class Timer:
    """Wall time per phase of the demo, printed at the end and written to results.json, with this
    process's CPU time beside it (on a shared machine, CPU time / threads estimates a quiet run)."""

    def __init__(self) -> None:
        self.t0, self.phases, self.cpu = time.time(), {}, {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start, cpu = time.time(), time.process_time()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.time() - start, 1)
            self.cpu[name] = round(self.cpu.get(name, 0.0) + time.process_time() - cpu, 1)

    @property
    def total(self) -> float:
        return round(time.time() - self.t0, 1)


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _free_port(preferred: int) -> int:
    """`preferred` if it is free, else any free port (0 asks for any)."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def prepare_data(opts: DemoOptions, tokenizer) -> dict[str, Path]:
    from loraops.data import CurateOptions, curate
    from loraops.data.report import summary_table

    out = {}
    for t in TENANTS:
        raw = tasks.write(t.task, opts.workdir / "raw" / f"{t.task}.jsonl", t.examples)
        report = curate(raw, opts.workdir / "data" / t.task, CurateOptions(val_fraction=opts.val_fraction),
                        tokenizer=tokenizer)
        console.print(summary_table(report))
        out[t.adapter] = opts.workdir / "data" / t.task
    return out


def train_config(opts: DemoOptions, t: TenantTask, data_dir: Path, train_examples: int):
    recipe = t.recipe if opts.steps is None else replace(t.recipe, steps=opts.steps)
    # No periodic validation or checkpoints: the evaluation step scores the same val set by generation.
    return recipe.train_config(opts.base, str(data_dir), str(opts.workdir / "runs" / t.adapter), train_examples,
                               batch_size=opts.batch_size, seq_len=opts.seq_len, eval_every=recipe.steps, seed=0,
                               resume=False, progress=True)


def train_adapters(opts: DemoOptions, base, data: dict[str, Path], timer: Timer) -> dict[str, Path]:
    """One adapter per tenant, on the one loaded base (LoRA removed between them); an adapter already
    trained in the workdir with the same settings is reused, so a second `make demo` skips to evaluation."""
    import shutil

    from loraops.lora import remove
    from loraops.train import train
    from loraops.train.batches import Dataset, load_dataset

    out = {}
    for t in TENANTS:
        dataset = load_dataset(data[t.adapter])
        config = train_config(opts, t, data[t.adapter], len(dataset.train))
        run_dir = Path(config.out)
        meta_file = run_dir / "adapter" / "loraops.json"
        if meta_file.exists() and json.loads(meta_file.read_text()).get("hyperparameters") == config.to_dict():
            console.print(f"reusing [bold]{t.adapter}[/] from {run_dir} (same settings)")
            out[t.adapter] = run_dir / "adapter"
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        r = t.recipe
        console.print(f"training [bold]{t.adapter}[/] for tenant {t.tenant}: LoRA r{r.rank} on {r.targets}, "
                      f"lr {r.lr:g}, {config.max_steps} steps, {config.replay} replay passages")
        with timer.phase(f"train {t.adapter}"):
            try:
                # The trainer's val loss is skipped: the evaluation scores the val set by generation.
                result = train(base, Dataset(dataset.train, [], dataset.digest), config)
            finally:
                remove(base.model)
        console.print(f"  {result.tokens:,} tokens in {result.seconds:.0f} s ({result.tokens_per_s:.0f} tokens/s)")
        out[t.adapter] = Path(result.adapter_dir)
    return out


def evaluate_adapters(opts: DemoOptions, data: dict[str, Path], adapters: dict[str, Path],
                      timer: Timer) -> dict[str, dict]:
    from loraops.evals import EvalConfig, evaluate, store_report
    from loraops.evals.table import summary_table

    reports = {}
    for t in TENANTS:
        with timer.phase(f"eval {t.adapter}"):
            report = evaluate(opts.base, adapters[t.adapter],
                              EvalConfig(data=data[t.adapter], max_examples=opts.eval_examples,
                                         batch_size=opts.eval_batch_size, progress=True),
                              label=t.adapter)
        store_report(report, adapters[t.adapter])
        console.print(summary_table(report))
        reports[t.adapter] = report.to_dict()
    return reports


def constrained_scores(opts: DemoOptions, data: dict[str, Path], adapters: dict[str, Path]) -> dict[str, dict]:
    """The adapted side of each domain again, decoded under the task's JSON schema (what `response_format`
    json_schema does in the server). The base side and the general suite do not change with it."""
    from loraops.evals.constrained import compile_schema
    from loraops.evals.domain import auto_max_new_tokens, load_examples
    from loraops.evals.generate import generate
    from loraops.evals.metrics import score_domain
    from loraops.lora import remove
    from loraops.models import load_adapter_onto, load_base

    loaded = load_base(opts.base)
    out = {}
    for t in TENANTS:
        examples = load_examples(data[t.adapter], loaded.tokenizer, opts.eval_examples)
        load_adapter_onto(loaded.model, loaded.info, str(adapters[t.adapter]))
        try:
            prompts = [e.prompt for e in examples]
            outputs = generate(loaded.model, loaded.tokenizer, prompts, auto_max_new_tokens(examples, loaded.tokenizer),
                               opts.eval_batch_size, grammar=compile_schema(tasks.SCHEMAS[t.task]()))
        finally:
            remove(loaded.model)
        out[t.adapter] = asdict(score_domain(prompts, outputs, [e.reference for e in examples]))
    return out


def register_and_promote(adapters: dict[str, Path], reports: dict[str, dict], base_name: str,
                         fingerprint: str, use_gate: bool) -> None:
    from loraops.errors import GateFailedError
    from loraops.evals import GateConfig, PromotionGate
    from loraops.registry import Registry

    with Registry() as registry:
        registry.register_base(fingerprint, base_name)
        gate = PromotionGate(GateConfig()) if use_gate else None
        for t in TENANTS:
            version = registry.push(adapters[t.adapter], t.adapter, tenant=t.tenant, created_by="demo")
            registry.record_eval(t.adapter, version.version, reports[t.adapter], actor="demo")
            try:
                registry.promote(t.adapter, version.version, actor="demo", reason="demo", gate=gate)
                console.print(f"registered {version.ref} ({version.digest[:19]}); [green]the gate passed it[/]")
            except GateFailedError as e:
                # What an operator does with a single-task adapter whose forgetting is accepted:
                # override with a reason, which the audit log keeps.
                console.print(f"[yellow]{e}[/]")
                registry.promote(t.adapter, version.version, actor="demo", gate=gate, force=True,
                                 reason="demo: single-task adapter, forgetting accepted")
                console.print(f"registered {version.ref}; promoted with --force (audited)")


def write_tenants(path: Path) -> dict[str, str]:
    keys = {t.tenant: f"sk-{t.tenant}-{secrets.token_urlsafe(12)}" for t in TENANTS}
    lines = []
    for t in TENANTS:
        lines += [f"[tenants.{t.tenant}]", f'api_keys = ["{keys[t.tenant]}"]', f'adapters = ["{t.adapter}"]',
                  "allow_base = true",
                  "rate_limit = { requests_per_minute = 600, tokens_per_minute = 200000, max_concurrent = 8 }", ""]
    write_text(path, "\n".join(lines))
    os.chmod(path, 0o600)
    return keys


def stop_server(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (the server shuts down gracefully), SIGKILL after `timeout` s; always reaps it.
    In a terminal the server usually has the same Ctrl-C already: SIGTERM on top of it is harmless.
    A Ctrl-C while waiting kills it at once (and is re-raised)."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise


def start_server(opts: DemoOptions, tenants_file: Path, admin_key: str) -> tuple[subprocess.Popen, str]:
    """-> (the server process, its URL) once /ready answers. On any failure or interrupt the server is
    stopped before the exception leaves."""
    port = _free_port(opts.port)
    env = {**os.environ, "LORAOPS_ADMIN_KEY": admin_key}
    proc = subprocess.Popen([sys.executable, "-m", "loraops", "serve", "--base", opts.base, "--registry",
                             "--workers", "1", "--tenants", str(tenants_file),
                             "--host", "127.0.0.1", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.time() + 300
        while time.time() < deadline:
            if proc.poll() is not None:
                raise LoraOpsError(f"the demo server exited with code {proc.returncode} before it was ready "
                                   "(its log is above)")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise LoraOpsError("the demo server did not become ready within 5 minutes")
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            console.print("stopping the server")
        stop_server(proc)
        raise


def field_marks(answer: str, expected: dict) -> str:
    """One ✓/✗ per expected field, in the reference's key order; ✗ for all when no JSON object parses."""
    from loraops.evals.metrics import field_accuracy

    return "".join("✓" if ok else "✗" for ok in field_accuracy(answer, expected).correct.values())


def stops_after_json(answer: str, finish_reason: str) -> bool:
    """The model ended its turn right after its JSON object: nothing follows the closing brace."""
    start = answer.find("{")
    if start == -1 or finish_reason != "stop":
        return False
    try:
        _, end = json.JSONDecoder().raw_decode(answer, start)
    except json.JSONDecodeError:
        return False
    return not answer[end:].strip()


def query(url: str, keys: dict[str, str], base_name: str, n: int = 3) -> list:
    """Fresh examples (a seed the training data never used), base vs adapter, via chat completions.
    All requests go at once, as tenants' traffic would: the server runs them in one mixed batch.
    -> renderables: a per-field ✓/✗ table (80 columns), then one full example per tenant."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI
    from rich.text import Text

    def ask(tenant: str, model: str, messages: list[dict]) -> tuple[str, str]:
        client = OpenAI(base_url=f"{url}/v1", api_key=keys[tenant], max_retries=0, timeout=300)
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=96, temperature=0)
        return answer.choices[0].message.content.strip(), answer.choices[0].finish_reason

    rows = [(t, record) for t in TENANTS for record in tasks.generate(t.task, n, seed=2026, duplicate_rate=0)]
    with ThreadPoolExecutor(max_workers=2 * len(rows)) as pool:
        futures = [[pool.submit(ask, t.tenant, model, record["messages"][:-1]) for model in (base_name, t.adapter)]
                   for t, record in rows]
        answers = [[f.result() for f in pair] for pair in futures]
    table = Table(title="Before (base) and after (adapter), through the OpenAI API", title_justify="left",
                  caption="one ✓/✗ per expected JSON field; stop: the answer ends right after its JSON",
                  caption_justify="left")
    for col in ("tenant", "input", "base", "stop", "adapter", "stop"):
        table.add_column(col, no_wrap=True)
    examples: dict[str, tuple] = {}
    for (t, record), pair in zip(rows, answers):
        expected = json.loads(record["messages"][-1]["content"])
        text = " ".join(record["messages"][-2]["content"].split("\n\n", 1)[-1].replace("Ticket:\n", "").split())
        cells = [c for answer, finish in pair
                 for c in (field_marks(answer, expected), "✓" if stops_after_json(answer, finish) else "✗")]
        table.add_row(t.tenant, text[:28] + "…", *cells)
        examples.setdefault(t.tenant, (t, text, record["messages"][-1]["content"], pair))
    out: list = [table]
    for t, text, expected, ((base_answer, _), (adapter_answer, _)) in examples.values():
        example = Text()
        example.append(f"\n{t.tenant} ({t.task}), one full example\n", style="bold")
        example.append(f"input:    {text[:240]}\nexpected: {expected}\n"
                       f"base:     {printable(' '.join(base_answer.split())[:240])}\n"
                       f"adapter:  {printable(adapter_answer)}")
        out.append(example)
    return out


def printable(text: str) -> str:
    """A model's answer as a terminal shows it safely: control characters as escapes (they would
    move the cursor or be invisible, and break the table widths)."""
    return "".join(c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode() for c in text)


def scores_table(reports: dict[str, dict], constrained: dict[str, dict]) -> Table:
    """Domain scores on every validation example, base vs adapter (free and under the task's schema)."""
    table = Table(title="JSON field accuracy on the held-out validation set (greedy)", title_justify="left",
                  caption="+schema: decoded under the task's JSON schema; exact: every field right; halluc.: "
                          "share of predicted values the input does not support; forget: the gate's "
                          "forgetting score (bound 0.10)", caption_justify="left")
    for i, col in enumerate(("adapter", "n", "base", "adapter", "+schema", "exact", "halluc.", "forget")):
        table.add_column(col, justify="left" if i == 0 else "right")
    for t in TENANTS:
        r, c = reports[t.adapter], constrained[t.adapter]
        base, adapted = r["domain_base"], r["domain_adapted"]
        table.add_row(t.adapter, str(adapted["examples"]), f"{base['field_accuracy']:.2f}",
                      f"{adapted['field_accuracy']:.2f}", f"{c['field_accuracy']:.2f}", f"{adapted['exact_match']:.2f}",
                      f"{adapted['hallucination_rate']:.3f}", f"{r['forgetting']['score']:.3f}")
    return table


def per_field_lines(reports: dict[str, dict]) -> str:
    return "\n".join(f"{t.adapter}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                 reports[t.adapter]["domain_adapted"]["per_field_accuracy"].items())
                     for t in TENANTS)


def write_results(opts: DemoOptions, timer: Timer, reports: dict[str, dict], constrained: dict[str, dict],
                  adapters: dict[str, Path]) -> Path:
    """WORKDIR/results.json: the figures docs/benchmarks.md records from a `make demo` run."""
    import platform
    from datetime import datetime, timezone

    tenants = {}
    for t in TENANTS:
        meta = json.loads((adapters[t.adapter] / "loraops.json").read_text())
        r = reports[t.adapter]
        tenants[t.adapter] = {"recipe": t.recipe.to_dict(), "hyperparameters": meta.get("hyperparameters", {}),
                              "train": meta.get("metrics", {}), "domain_base": r["domain_base"],
                              "domain_adapted": r["domain_adapted"], "domain_constrained": constrained[t.adapter],
                              "general": r["general"], "forgetting": r["forgetting"]}
    results = {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
               "seconds": {**timer.phases, "total": timer.total},
               "cpu_seconds": {**timer.cpu, "total": round(time.process_time(), 1)}, "tenants": tenants}
    path = opts.workdir / "results.json"
    write_text(path, json.dumps(results, indent=2) + "\n")
    return path


def run(opts: DemoOptions) -> None:
    from loraops.models import load_base

    timer = Timer()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    # The demo's registry lives in its workdir; converted base models stay in the shared cache.
    from loraops.paths import models_dir
    os.environ["LORAOPS_MODELS"] = str(models_dir())
    os.environ["LORAOPS_HOME"] = str(opts.workdir / "home")
    _step("1/6 base model")
    with timer.phase("load base"):
        base = load_base(opts.base, progress=True)
    console.print(f"{base.info.name}: {base.info.path} ({base.info.fingerprint[:19]})")
    _step("2/6 curate two tenants' data")
    with timer.phase("curate"):
        data = prepare_data(opts, base.tokenizer)
    _step("3/6 train one adapter per tenant")
    adapters = train_adapters(opts, base, data, timer)
    base_info = base.info
    del base
    _step("4/6 evaluate against the base: domain gain and forgetting")
    reports = evaluate_adapters(opts, data, adapters, timer)
    with timer.phase("eval constrained"):
        constrained = constrained_scores(opts, data, adapters)
    console.print(scores_table(reports, constrained))
    console.print(per_field_lines(reports))
    _step("5/6 register, gate and promote")
    with timer.phase("register"):
        register_and_promote(adapters, reports, base_info.name, base_info.fingerprint, opts.gate)
    _step("6/6 serve both tenants from one base")
    keys = write_tenants(opts.workdir / "tenants.toml")
    admin_key = f"sk-admin-{secrets.token_urlsafe(12)}"
    with _stop_signals_interrupt():
        _serve(opts, keys, admin_key, base_info.name, timer,
               lambda: write_results(opts, timer, reports, constrained, adapters))


def _serve(opts: DemoOptions, keys: dict[str, str], admin_key: str, base_name: str, timer: Timer,
           finish: Callable[[], Path]) -> None:
    """Start the server, query it, write results.json (`finish`), then keep serving unless --no-serve."""
    with timer.phase("serve + queries"):
        proc, url = start_server(opts, opts.workdir / "tenants.toml", admin_key)
    finished = False
    try:
        with timer.phase("serve + queries"):
            rendered = query(url, keys, base_name)
        for renderable in rendered:
            console.print(renderable)
        results = finish()
        phases = ", ".join(f"{k} {v / 60:.1f}" for k, v in timer.phases.items())
        console.print(f"[green]demo finished in {timer.total / 60:.1f} min[/] (minutes: {phases}; {results})")
        finished = True
        if not opts.serve:
            return
        console.print(f"\nserver: {url}/v1   dashboard: {url}/ui (admin key {admin_key})")
        for tenant, key in keys.items():
            console.print(f"  tenant {tenant}: api key {key}")
        console.print(f'  try: curl {url}/v1/models -H "Authorization: Bearer {keys["acme"]}"')
        console.print("Ctrl-C stops the server.")
        code = proc.wait()
        if code != 0:
            raise LoraOpsError(f"the demo server exited by itself with code {code} (its log is above)")
        # Exit code 0: the server was told to stop. Ctrl-C in a terminal signals the whole process
        # group, and the server may finish before this process handles its own KeyboardInterrupt.
        console.print(f"server stopped; the demo's files stay in {opts.workdir}")
    except KeyboardInterrupt:
        console.print("stopping the server")
        stop_server(proc)
        console.print(f"server stopped; the demo's files stay in {opts.workdir}")
        if not finished:
            raise  # interrupted before the end: the CLI exits with 130
    finally:
        stop_server(proc)


@contextmanager
def _stop_signals_interrupt():
    """While the server child runs, SIGTERM and SIGHUP stop the demo like Ctrl-C (a KeyboardInterrupt), so
    the server is stopped too instead of being left behind. Main thread only (tests may run elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
