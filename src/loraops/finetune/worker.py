"""Workers: take jobs from the queue in the registry database and run each in a process of its own.

A worker claims a job (store.py: fair order, a lease), checks the files of a new job (their bytes
against their sha256) and queues it, or starts `python -m loraops.finetune.pipeline` for a queued
or interrupted one. While that process runs, the worker looks at the job's status every
`poll_s` seconds (a cancelled job's process is killed at once, and the worker is free again) and
renews the lease every lease_s / 3. Stopping a worker (SIGTERM, Ctrl-C, server shutdown) kills
the job process and gives the lease back, so another worker resumes the job from its last
checkpoint without waiting. A worker that dies (SIGKILL) takes its job process with it
(pipeline.py), and the job resumes once its lease expires.

`loraops worker` runs one worker; `loraops serve --workers N` runs N in the server's process.
Several workers may share one database (PostgreSQL across machines, SQLite on one); they must
share LORAOPS_HOME too (file blobs, job directories, the registry's blobs).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from loraops.errors import BlobCorruptError
from loraops.finetune.errors import LeaseLostError
from loraops.finetune.pipeline import EXIT_LEASE_LOST, clean_workdir, workdir
from loraops.finetune.store import Claim, FineTuneStore, NewEvent

log = logging.getLogger("loraops.finetune")


@dataclass(frozen=True)
class WorkerOptions:
    lease_s: float = 60.0        # a dead worker's job is taken over this long after its last renewal
    poll_s: float = 1.0          # how often an idle worker looks for work and a busy one for cancellation
    threads: int | None = None   # torch threads of each job process (None: torch's default)
    kill_grace_s: float = 5.0    # SIGTERM, then SIGKILL after this long


class Worker:
    def __init__(self, store: FineTuneStore, options: WorkerOptions = WorkerOptions(), name: str | None = None):
        self.store, self.options = store, options
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 10_000}"

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set."""
        log.info("worker %s: waiting for fine-tuning jobs", self.name)
        while not stop.is_set():
            try:
                claim = self.store.claim(self.name, self.options.lease_s)
                if claim is None:
                    stop.wait(self.options.poll_s)
                elif claim.job.status == "validating_files":
                    self.validate(claim)
                else:
                    self.execute(claim, stop)
            except Exception:  # the database went away, a bug: this job's lease expires, the worker goes on
                log.exception("worker %s: error while looking for or running a job; going on", self.name)
                stop.wait(self.options.poll_s)

    def validate(self, claim: Claim) -> None:
        job = claim.job
        try:
            for digest in filter(None, (job.training_digest, job.validation_digest)):
                self.store.file_bytes(digest)  # re-hashes the bytes
            self.store.mark_queued(job.id, claim.token)
        except BlobCorruptError as e:
            self.store.finish(job.id, claim.token, "failed", events=[NewEvent(str(e), level="error", key="failed")],
                              error={"code": "invalid_training_file", "message": str(e), "param": "training_file"})
        except LeaseLostError:
            pass  # cancelled meanwhile

    def execute(self, claim: Claim, stop: threading.Event) -> None:
        job, token, opts = claim.job, claim.token, self.options
        work = workdir(job.id)
        work.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "loraops.finetune.pipeline", job.id, str(token), str(os.getpid())]
        if opts.threads is not None:
            argv.append(str(opts.threads))
        log.info("worker %s: running %s (claim %d)", self.name, job.id, token)
        with open(work / "job.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        renewed = time.monotonic()
        while proc.poll() is None:
            if stop.wait(opts.poll_s):
                self._kill(proc)
                self.store.release(job.id, token)
                log.info("worker %s: stopped; %s goes back to the queue", self.name, job.id)
                return
            try:
                if self.store.status(job.id) == "cancelled":
                    self._kill(proc)
                    clean_workdir(job.id)
                    log.info("worker %s: %s was cancelled; its process is stopped", self.name, job.id)
                    return
                if time.monotonic() - renewed > opts.lease_s / 3:
                    if not self.store.heartbeat(job.id, token, opts.lease_s):
                        self._kill(proc)
                        return
                    renewed = time.monotonic()
            except Exception:  # the database is unreachable: keep going while the lease lasts
                log.exception("worker %s: cannot reach the job queue", self.name)
                if time.monotonic() - renewed > opts.lease_s:
                    self._kill(proc)
                    return
        if proc.returncode not in (0, EXIT_LEASE_LOST):
            message = (f"the job process exited with code {proc.returncode}"
                       if proc.returncode > 0 else f"the job process was killed by signal {-proc.returncode}")
            try:
                self.store.finish(job.id, token, "failed", events=[NewEvent(message, level="error", key="failed")],
                                  error={"code": "internal_error", "message": message, "param": None})
                clean_workdir(job.id)
            except LeaseLostError:
                pass

    def _kill(self, proc: subprocess.Popen) -> None:
        proc.terminate()
        try:
            proc.wait(self.options.kill_grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class WorkerPool:
    """N workers in threads of this process (`loraops serve --workers N`)."""

    def __init__(self, n: int, options: WorkerOptions = WorkerOptions()):
        self.store = FineTuneStore()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=Worker(self.store, options, name=f"{socket.gethostname()}:"
                                                       f"{os.getpid()}:w{i}").run,
                                         args=(self.stop_event,), name=f"loraops-worker-{i}", daemon=True)
                        for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join()
        self.store.close()


def run_worker(options: WorkerOptions) -> None:
    """`loraops worker`: one worker in this process until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = FineTuneStore()
    try:
        Worker(store, options).run(stop)
    finally:
        store.close()
