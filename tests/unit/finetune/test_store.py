"""The job queue and the file store over a real database (SQLite, and PostgreSQL where configured)."""

import hashlib
import threading
import time

import pytest

from loraops.errors import BlobCorruptError
from loraops.finetune.errors import LeaseLostError, QuotaExceededError
from loraops.finetune.store import MAX_ATTEMPTS, FineTuneStore, NewEvent
from loraops.serve.errors import BadRequestError


def new_job(store, tenant: str, max_active: int = 100, **kw):
    fields = dict(tenant=tenant, model="tiny", base_name="tiny", base_spec="/models/tiny", parent=None,
                  training_file="file-x", validation_file=None, training_digest="0" * 64, validation_digest=None,
                  suffix=None, seed=0, user_metadata=None, hyperparameters={}, options={},
                  registry_name=f"{tenant}-ft")
    return store.create_job(max_active, **{**fields, **kw})


def queue(store, *tenants: str) -> list[str]:
    """Jobs for these tenants, in this order, each through validation into the queue."""
    ids = [new_job(store, t).id for t in tenants]
    for _ in ids:
        claim = store.claim("validator", 60)
        assert claim.job.status == "validating_files"
        store.mark_queued(claim.job.id, claim.token)
    return ids


def test_files_are_checked_first_then_jobs_run_in_fair_order(store):
    a1, a2, a3, b1 = queue(store, "a", "a", "a", "b")
    order = [store.claim(f"w{i}", 60).job.id for i in range(4)]
    # a1 first (oldest); then b1 (b runs nothing, a runs one) although a2 and a3 are older
    assert order == [a1, b1, a2, a3]
    assert store.claim("w5", 60) is None


def test_the_tenant_that_started_a_job_least_recently_goes_first(store):
    (a1,) = queue(store, "a")
    c = store.claim("w", 60)
    store.finish(c.job.id, c.token, "succeeded")
    time.sleep(1.1)  # started_at has one-second resolution
    a2, b1 = queue(store, "a", "b")
    assert store.claim("w", 60).job.id == b1  # neither runs anything; a started one last


def test_an_expired_lease_is_taken_over_and_the_old_claim_can_no_longer_write(store):
    (job_id,) = queue(store, "a")
    first = store.claim("w1", 0.2)
    assert first.job.status == "running"
    assert store.claim("w2", 60) is None                    # the lease is live
    time.sleep(0.3)
    second = store.claim("w2", 60)
    assert second.job.id == job_id and second.token > first.token
    assert any("Resuming the job" in e.message for e in store.events(job_id))
    with pytest.raises(LeaseLostError):
        store.add_events(job_id, first.token, [NewEvent("from the old worker")])
    assert not store.heartbeat(job_id, first.token, 60)
    assert store.heartbeat(job_id, second.token, 60)


def test_a_released_job_is_resumed_at_once(store):
    (job_id,) = queue(store, "a")
    c = store.claim("w1", 600)
    store.release(job_id, c.token)
    assert store.claim("w2", 600).job.id == job_id


def test_a_job_whose_workers_keep_dying_fails(store):
    (job_id,) = queue(store, "a")
    for _ in range(MAX_ATTEMPTS - 1):
        assert store.claim("w", 0.01) is not None
        time.sleep(0.02)
    assert store.claim("w", 0.01) is None
    job = store.job("a", job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"


def test_cancel_stops_the_claim_and_only_the_owner_can_cancel(store):
    (job_id,) = queue(store, "a")
    c = store.claim("w", 60)
    assert store.cancel("b", job_id) is None                # another tenant's: as if unknown
    assert store.cancel("a", job_id).status == "cancelled"
    assert not store.heartbeat(job_id, c.token, 60)
    with pytest.raises(LeaseLostError):
        store.finish(job_id, c.token, "succeeded")
    with pytest.raises(BadRequestError, match="already cancelled"):
        store.cancel("a", job_id)


def test_concurrent_claims_take_different_jobs(store, db_url, _isolated_home):
    queue(store, "a", "b", "c", "d")
    stores = [FineTuneStore(url=db_url, home=_isolated_home) for _ in range(4)]
    barrier, got = threading.Barrier(4), []

    def take(s):
        barrier.wait()
        got.append(s.claim("w", 60).job.id)

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len(set(got)) == 4


def test_lists_page_newest_first_with_has_more_and_after(store):
    ids = [new_job(store, "a").id for _ in range(5)]
    new_job(store, "b")
    first = store.list_jobs("a", None, 2)
    assert [j.id for j in first.items] == [ids[4], ids[3]] and first.has_more
    second = store.list_jobs("a", first.items[-1].id, 2)
    third = store.list_jobs("a", second.items[-1].id, 2)
    assert [j.id for j in second.items + third.items] == [ids[2], ids[1], ids[0]]
    assert second.has_more and not third.has_more
    with pytest.raises(BadRequestError, match="after"):
        store.list_jobs("b", ids[0], 2)                     # another tenant's id is no cursor here


def test_events_with_a_key_are_recorded_once(store):
    (job_id,) = queue(store, "a")
    c = store.claim("w", 60)
    for _ in range(2):  # a resumed job repeats its steps
        store.add_events(job_id, c.token, [NewEvent("Step 1", {"step": 1}, type="metrics", key="loss:1"),
                                           NewEvent("no key")])
    messages = [e.message for e in store.events(job_id)]
    assert messages.count("Step 1") == 1 and messages.count("no key") == 2


def test_unfinished_jobs_are_bounded_per_tenant(store):
    new_job(store, "a", max_active=2)
    new_job(store, "a", max_active=2)
    with pytest.raises(QuotaExceededError, match="2 fine-tuning jobs"):
        new_job(store, "a", max_active=2)
    new_job(store, "b", max_active=2)                       # per tenant


def test_file_bytes_are_bounded_per_tenant_and_a_refused_file_stores_nothing(store, tmp_path):
    src = tmp_path / "f.jsonl"
    src.write_bytes(b'{"text": "hello"}\n' * 10)
    f = store.add_file("a", "f.jsonl", src, 10, 20, max_total_bytes=400)
    assert store.file_bytes(f.digest) == src.read_bytes()
    other = tmp_path / "g.jsonl"
    other.write_bytes(b'{"text": "other"}\n' * 20)
    with pytest.raises(QuotaExceededError, match="quota of 400"):
        store.add_file("a", "g.jsonl", other, 20, 40, max_total_bytes=400)
    assert not store.blobs.path(hashlib.sha256(other.read_bytes()).hexdigest()).exists()
    assert [x.id for x in store.list_files("a", None, 10).items] == [f.id]
    store.add_file("b", "g.jsonl", other, 20, 40, max_total_bytes=400)  # per tenant


def test_deleting_a_file_deletes_its_bytes_unless_a_running_job_needs_them(store, tmp_path):
    src = tmp_path / "f.jsonl"
    src.write_bytes(b'{"text": "hello"}\n')
    f = store.add_file("a", "f.jsonl", src, 1, 2, None)
    job = new_job(store, "a", training_file=f.id, training_digest=f.digest)
    with pytest.raises(BadRequestError, match=job.id):
        store.delete_file("a", f.id)
    store.cancel("a", job.id)
    assert not store.delete_file("b", f.id)                 # not b's
    assert store.delete_file("a", f.id)
    with pytest.raises(BlobCorruptError, match="missing"):
        store.file_bytes(f.digest)


def test_fine_tuned_model_ids_resolve_only_for_their_tenant(store):
    (job_id,) = queue(store, "a")
    c = store.claim("w", 60)
    store.add_checkpoint(job_id, c.token, 5, "ft:tiny:a::x:ckpt-step-5", 1, {"step": 5})
    store.finish(job_id, c.token, "succeeded", fine_tuned_model="ft:tiny:a::x", registry_version=2)
    assert store.model_version("a", "ft:tiny:a::x") == ("a-ft", 2)
    assert store.model_version("a", "ft:tiny:a::x:ckpt-step-5") == ("a-ft", 1)
    assert store.model_version("b", "ft:tiny:a::x") is None
    assert store.models("a") == ["ft:tiny:a::x"] and store.models("b") == []
