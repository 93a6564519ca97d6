"""One job's work, in a process of its own that a worker starts (`python -m loraops.finetune.pipeline`):

    curate the training (and validation) file  -> LORAOPS_HOME/finetune/jobs/<job>/data/
    train (resumable: a restarted job continues from its newest checkpoint)  -> run/
    register the kept checkpoints and the final adapter as versions of <tenant>-<suffix>, with
      lineage (dataset digest, hyperparameters, job id, the adapter it continued from)
    evaluate the final adapter against the base (domain + forgetting), store it on the version
    run the promotion gate; promote to production only with auto_promote and a pass
    succeed: the ft model id, trained tokens, a results file

Every phase is skipped when a previous start of the job already finished it (its outputs are
written atomically), so a job whose worker was killed resumes where it stopped. Each step's loss
(read from run/metrics.jsonl as the trainer appends it) and every phase's outcome become events.
Every write to the job is fenced by the claim's token; a process whose claim is gone exits with
EXIT_LEASE_LOST. On Linux the process dies with the worker that started it (PR_SET_PDEATHSIG), so a
SIGKILLed worker never leaves a trainer behind that another worker's would race.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from loraops import paths
from loraops.errors import DataFormatError, LoraOpsError, TrainDataError
from loraops.finetune.errors import JobFailed, LeaseLostError
from loraops.finetune.ids import RESULTS_FILE, checkpoint_model_id, model_id
from loraops.finetune.spec import BASE_LR
from loraops.finetune.store import FineTuneStore, JobRecord, NewEvent

EXIT_LEASE_LOST = 3
KEEP_CHECKPOINTS = 3     # servable checkpoints per job besides the final model, as OpenAI keeps
EVAL_EXAMPLES = 50       # validation examples the domain evaluation generates for
MAX_SEQ_LEN = 1024
log = logging.getLogger("loraops.finetune")


def workdir(job_id: str) -> Path:
    return paths.home() / "finetune" / "jobs" / job_id


def clean_workdir(job_id: str) -> None:
    """A finished job keeps only its log: its inputs and curated data are the tenant's (deleting the
    file must delete them), its checkpoints and adapters are in the registry."""
    work = workdir(job_id)
    if work.is_dir():
        for entry in work.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != "job.log":
                entry.unlink()


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_events(records: list[dict]) -> list[NewEvent]:
    """metrics.jsonl records -> events. Steps count from 1 (step N: after N optimizer steps), as
    checkpoints do; each step's event has a key, so a resumed job's repeated steps are not doubled."""
    events = []
    for r in records:
        step = r["step"] + 1
        if r.get("skipped"):
            events.append(NewEvent(f"Step {step}: skipped ({r.get('reason')})", {"step": step}, level="warn",
                                   type="metrics", key=f"skip:{step}"))
        elif "loss" in r:
            events.append(NewEvent(f"Step {step}: training loss={r['loss']:.4f}, {r['tokens_per_s']:,.0f} tokens/s",
                                   {"step": step, "train_loss": r["loss"], "learning_rate": r["lr"],
                                    "tokens": r["tokens"], "tokens_per_s": r["tokens_per_s"]},
                                   type="metrics", key=f"loss:{step}"))
        if "val_loss" in r:
            events.append(NewEvent(f"Step {step}: validation loss={r['val_loss']:.4f}",
                                   {"step": step, "valid_loss": r["val_loss"]}, type="metrics", key=f"val:{step}"))
    return events


class MetricsTail:
    """Turns lines the trainer appends to metrics.jsonl into events, every `every_s` seconds, in a
    thread. A resumed trainer rewrites the file from its checkpoint: then reading starts over."""

    def __init__(self, path: Path, emit: Callable[[list[NewEvent]], None], every_s: float = 0.5):
        self.path, self.emit, self.every_s = path, emit, every_s
        self.offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loraops-metrics-tail", daemon=True)

    def __enter__(self) -> MetricsTail:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[:chunk.rfind(b"\n") + 1]       # a line being written is read next time
        self.offset += len(complete)
        records = [json.loads(line) for line in complete.splitlines() if line.strip()]
        if records:
            self.emit(metric_events(records))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.poll()
            except LeaseLostError:
                os._exit(EXIT_LEASE_LOST)               # cancelled or taken over: stop training now


class JobRun:
    def __init__(self, store: FineTuneStore, registry, job: JobRecord, token: int):
        self.store, self.registry, self.job, self.token = store, registry, job, token
        self.work = workdir(job.id)
        self.run_dir = self.work / "run"
        self.report = dict(job.report)
        self.ft_model = model_id(job.base_name, job.tenant, job.suffix, job.id)
        self.actor = f"finetune:{job.id}"

    def emit(self, events: list[NewEvent]) -> None:
        self.store.add_events(self.job.id, self.token, events)

    def run(self) -> None:
        from loraops.models import resolve_base

        self.work.mkdir(parents=True, exist_ok=True)
        base_dir = resolve_base(self.job.base_spec).path
        data = self.curate(base_dir)
        cfg = self.train_config(data, base_dir)
        self.train(cfg)
        version = self.register(cfg)
        self.evaluate_and_gate(data, version)
        self.succeed(version)

    # ---- curate -------------------------------------------------------------------------------

    def curate(self, base_dir: Path) -> Path:
        from transformers import AutoTokenizer

        from loraops.atomic import atomic_dir
        from loraops.data import CurateOptions, curate

        out = self.work / "data"
        if (out / "report.json").is_file():
            return out
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        inputs = self.work / "input"
        inputs.mkdir(exist_ok=True)
        self.store.copy_file(self.job.training_digest, inputs / "training.jsonl")
        if self.job.validation_file is None:
            report = curate(inputs / "training.jsonl", out, CurateOptions(seed=self.job.seed), tokenizer).to_dict()
            summary = _curation_summary(report, report["train"], report["val"])
        else:
            # Both files are curated on their own (val_fraction 0: every kept line stays in its file).
            self.store.copy_file(self.job.validation_digest, inputs / "validation.jsonl")
            options = CurateOptions(seed=self.job.seed, val_fraction=0.0)
            train = curate(inputs / "training.jsonl", self.work / "curated-training", options, tokenizer).to_dict()
            val = curate(inputs / "validation.jsonl", self.work / "curated-validation", options, tokenizer).to_dict()
            with atomic_dir(out) as tmp:
                (tmp / "train.jsonl").write_bytes((self.work / "curated-training" / "train.jsonl").read_bytes())
                (tmp / "val.jsonl").write_bytes((self.work / "curated-validation" / "train.jsonl").read_bytes())
                (tmp / "report.json").write_text(json.dumps({"training": train, "validation": val}, indent=2))
            summary = _curation_summary(train, train["train"], val["train"])
        self.report["curation"] = summary
        dropped = ", ".join(f"{rule} {n}" for rule, n in summary["dropped"].items()) or "none"
        self.store.update(self.job.id, self.token, report=dict(self.report), events=[NewEvent(
            f"Curated the training data: kept {summary['kept']} of {summary['lines_in']} lines "
            f"(train {summary['train']}, validation {summary['validation']}); dropped: {dropped}",
            summary, key="curated")])
        if summary["train"] == 0:
            raise JobFailed("invalid_training_file", "curation kept no training record (see the curation event)",
                            "training_file")
        return out

    # ---- train --------------------------------------------------------------------------------

    def train_config(self, data: Path, base_dir: Path):
        from transformers import AutoConfig

        from loraops.train import TrainConfig
        from loraops.train.checkpoint import list_checkpoints

        text_config = AutoConfig.from_pretrained(base_dir).get_text_config()
        seq_len = min(MAX_SEQ_LEN, getattr(text_config, "max_position_embeddings", MAX_SEQ_LEN))
        hp, o = self.job.hyperparameters, self.job.options
        parent = str(self.registry.fetch(self.job.parent)) if self.job.parent else None
        return TrainConfig(base=self.job.base_spec, data=str(data), out=str(self.run_dir), rank=o["rank"],
                           alpha=o["alpha"], targets=o["targets"], epochs=hp["n_epochs"],
                           batch_size=hp["batch_size"], seq_len=seq_len,
                           lr=BASE_LR * hp["learning_rate_multiplier"], seed=self.job.seed, replay=o["replay"],
                           save_every=o["checkpoint_every"], eval_every=o["checkpoint_every"],
                           keep_checkpoints=KEEP_CHECKPOINTS, resume=bool(list_checkpoints(self.run_dir)),
                           progress=False, init_adapter=parent)

    def train(self, cfg) -> None:
        from loraops.train import run as train_run

        if (self.run_dir / "adapter" / "loraops.json").is_file():
            return  # trained by an earlier start of this job
        if cfg.resume:
            self.emit([NewEvent("Resuming training from the newest checkpoint", key=f"resume:{self.token}")])
        with MetricsTail(self.run_dir / "metrics.jsonl", self.emit):
            train_run(cfg)

    # ---- register -----------------------------------------------------------------------------

    def register(self, cfg) -> int:
        """Push the kept checkpoints, then the final adapter (the highest version); -> its version."""
        from loraops.lora import read_adapter, save_adapter
        from loraops.train import checkpoint_adapters
        from loraops.train.checkpoint import list_checkpoints

        records = read_metrics(self.run_dir / "metrics.jsonl")
        final = read_adapter(self.run_dir / "adapter")
        final.meta.update(self._lineage())
        done = self.store.checkpoint_steps(self.job.id)
        pending = [c for c in list_checkpoints(self.run_dir) if int(c.name.split("-")[1]) not in done]
        if pending:
            from loraops.models import load_base

            meta = {k: v for k, v in final.meta.items() if k != "metrics"}
            for adapter in checkpoint_adapters(load_base(cfg.base), cfg, pending, meta):
                step = adapter.meta["metrics"]["checkpoint_step"]
                self._push_checkpoint(save_adapter(adapter, self.work / "export" / f"step-{step}"), step, records)
        version = self.store.job(None, self.job.id).registry_version
        if version is None:
            steps = final.meta["metrics"]["steps"]
            version = self._push_checkpoint(save_adapter(final, self.work / "export" / "final"), steps, records)
            self.store.update(self.job.id, self.token, registry_version=version)
        return version

    def _lineage(self) -> dict:
        extra = {"fine_tuning_job": self.job.id, "tenant": self.job.tenant, "created_by": "loraops fine-tuning"}
        if self.job.parent:
            name, _, number = self.job.parent.partition("@")
            extra["parents"] = [{"name": name, "version": int(number), "weight": 1.0}]
        return extra

    def _push_checkpoint(self, adapter_dir: Path, step: int, records: list[dict]) -> int:
        v = self.registry.push(adapter_dir, self.job.registry_name, tenant=self.job.tenant, register_base=True,
                               created_by=self.actor)
        metrics = {"step": step}
        for r in records:
            if r["step"] + 1 == step and "loss" in r and not r.get("skipped"):
                metrics["train_loss"] = r["loss"]
            if r["step"] + 1 == step and "val_loss" in r:
                metrics["valid_loss"] = r["val_loss"]
        self.store.add_checkpoint(self.job.id, self.token, step, checkpoint_model_id(self.ft_model, step),
                                  v.version, metrics)
        return v.version

    # ---- evaluate and gate --------------------------------------------------------------------

    def evaluate_and_gate(self, data: Path, version: int) -> None:
        from loraops.evals import EvalConfig, GateConfig, PromotionGate, evaluate

        name, ref = self.job.registry_name, f"{self.job.registry_name}@{version}"
        val = data / "val.jsonl"
        domain = str(data) if val.is_file() and val.read_text().strip() else None
        eval_config = EvalConfig(data=domain, max_examples=EVAL_EXAMPLES)
        if "evaluation" not in self.report:
            report = evaluate(self.job.base_spec, self.registry.fetch(ref), eval_config, label=ref)
            self.registry.record_eval(name, version, report.to_dict(), actor=self.actor)
            summary = _eval_summary(report)
            self.report["evaluation"] = summary
            self.store.update(self.job.id, self.token, report=dict(self.report), events=[
                NewEvent(_eval_message(summary), summary, key="evaluation")])
        if "gate" in self.report:
            return
        gate = PromotionGate(GateConfig(), base=self.job.base_spec, data=domain, eval_config=eval_config)
        try:
            passed, why = gate(self.registry, name, version)
        except LoraOpsError as e:
            passed, why = False, str(e)
        auto = bool(self.job.options.get("auto_promote"))
        if passed and auto:
            self.registry.promote(name, version, actor=self.actor, gate=gate,
                                  reason=f"fine-tuning job {self.job.id}: auto_promote, the gate passed")
        verdict = {"passed": passed, "reason": why, "auto_promote": auto, "promoted": passed and auto}
        outcome = ("promoted to production" if passed and auto else
                   "not promoted (auto_promote is off)" if not auto else "not promoted")
        self.report["gate"] = verdict
        self.store.update(self.job.id, self.token, report=dict(self.report), events=[NewEvent(
            f"Promotion gate {'passed' if passed else 'refused'} {ref}: {why}; {outcome}", verdict,
            level="info" if passed or not auto else "warn", key="gate")])

    # ---- succeed ------------------------------------------------------------------------------

    def succeed(self, version: int) -> None:
        records = read_metrics(self.run_dir / "metrics.jsonl")
        losses = [r for r in records if "loss" in r and not r.get("skipped")]
        results = self.work / "results.csv"
        results.write_text(_results_csv(records))
        result_file = self.store.add_file(self.job.tenant, f"{self.job.id}_results.csv", results,
                                          len(records), 0, None, purpose=RESULTS_FILE)
        self.store.finish(self.job.id, self.token, "succeeded", fine_tuned_model=self.ft_model,
                          registry_version=version, trained_tokens=losses[-1]["tokens"] if losses else 0,
                          result_file=result_file.id, events=[
                              NewEvent(f"New fine-tuned model created: {self.ft_model}", key="model"),
                              NewEvent("The job has successfully completed", key="succeeded")])


def _curation_summary(report: dict, train: int, validation: int) -> dict:
    return {"lines_in": report["lines_in"], "kept": report["kept"], "train": train, "validation": validation,
            "dropped": report["dropped"], "pii": report["pii"], "formats": report["formats"],
            "dataset_sha256": report["output_sha256"]}


def _eval_summary(report) -> dict:
    f, g = report.forgetting, report.general
    return {"primary_metric": report.primary_metric, "domain_gain": report.domain_gain,
            "base": report.domain_base.primary_value if report.domain_base else None,
            "adapted": report.domain_adapted.primary_value if report.domain_adapted else None,
            "forgetting": f.score, "kl_mean": f.kl_mean, "ppl_base": g.ppl_base, "ppl_adapted": g.ppl_adapted}


def _eval_message(s: dict) -> str:
    forgetting = f"forgetting {s['forgetting']:.3f} (perplexity {s['ppl_base']:.2f} -> {s['ppl_adapted']:.2f})"
    if s["primary_metric"] is None:
        return f"Evaluated against the base (no validation examples for a domain score): {forgetting}"
    return (f"Evaluated against the base: {s['primary_metric']} {s['adapted']:.3f} vs base {s['base']:.3f} "
            f"({s['domain_gain']:+.3f}); {forgetting}")


def _results_csv(records: list[dict]) -> str:
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["step", "train_loss", "valid_loss", "learning_rate", "tokens", "tokens_per_s"])
    for r in records:
        if "loss" in r and not r.get("skipped"):
            w.writerow([r["step"] + 1, r["loss"], val.get(r["step"], ""), r["lr"], r["tokens"], r["tokens_per_s"]])
    return out.getvalue()


def _failure(e: Exception) -> JobFailed:
    if isinstance(e, JobFailed):
        return e
    if isinstance(e, (TrainDataError, DataFormatError)):
        return JobFailed("invalid_training_file", str(e), "training_file")
    if isinstance(e, LoraOpsError):
        return JobFailed("training_failed", str(e))
    return JobFailed("internal_error", f"the job failed unexpectedly ({type(e).__name__}: {e}); the worker's log "
                                       f"has the traceback")


def _die_with_parent(parent: int) -> None:
    """Linux: be killed when the worker that started us dies (it may have been SIGKILLed)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(EXIT_LEASE_LOST)


def main(argv: list[str]) -> int:
    """argv: JOB_ID TOKEN WORKER_PID [THREADS]"""
    from loraops.registry import Registry

    job_id, token, parent = argv[0], int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    if len(argv) > 3:
        import torch

        torch.set_num_threads(int(argv[3]))
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {job_id} %(levelname)s: %(message)s")
    log.setLevel(logging.INFO)
    store, registry = FineTuneStore(), Registry()
    job = store.job(None, job_id)
    try:
        JobRun(store, registry, job, token).run()
    except LeaseLostError:
        return EXIT_LEASE_LOST
    except Exception as e:
        log.exception("job %s failed", job_id)
        failed = _failure(e)
        try:
            store.finish(job_id, token, "failed", error=failed.to_dict(),
                         events=[NewEvent(failed.message, level="error", key="failed")])
        except LeaseLostError:
            return EXIT_LEASE_LOST
    finally:
        store.close()
        registry.close()
    clean_workdir(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
