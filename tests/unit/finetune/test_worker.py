"""Workers in a process (`serve --workers N`): they take jobs, and stopping them gives the jobs back."""

import time

import pytest

from loraops.errors import ConfigError
from loraops.finetune import WorkerOptions, WorkerPool
from loraops.finetune.store import FineTuneStore
from loraops.serve.config import ServeOptions, check_options


def test_workers_need_the_registry():
    with pytest.raises(ConfigError, match="--registry"):
        check_options(ServeOptions(base="tiny", insecure_no_auth=True, workers=1))
    check_options(ServeOptions(base="tiny", insecure_no_auth=True, workers=1, registry=True))


def test_a_stopped_pool_kills_its_job_process_and_gives_the_job_back(_isolated_home, tmp_path):
    store = FineTuneStore()
    src = tmp_path / "t.jsonl"
    src.write_text('{"text": "hello"}\n')
    f = store.add_file("a", "t.jsonl", src, 1, 1, None)
    job = store.create_job(1, tenant="a", model="tiny", base_name="tiny", base_spec=str(tmp_path / "no-base"),
                           parent=None, training_file=f.id, validation_file=None, training_digest=f.digest,
                           validation_digest=None, suffix=None, seed=0, user_metadata=None, hyperparameters={},
                           options={}, registry_name="a-ft")
    pool = WorkerPool(1, WorkerOptions(lease_s=600, poll_s=0.05))
    pool.start()
    deadline = time.monotonic() + 30
    while store.job("a", job.id).status != "running":       # validated, queued, claimed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pool.stop()
    after = store.job("a", job.id)
    assert after.status == "running" and after.lease_owner is None and after.lease_expires_at == 0.0
    assert store.claim("another", 60).job.id == job.id      # at once, not after the 600 s lease
    store.close()
