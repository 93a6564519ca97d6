"""The registry under real processes: concurrent pushes, and a push killed mid-upload.

Children come from a forkserver that has imported torch once, so six workers start in well under
a second instead of importing torch six times.
"""

import multiprocessing

import pytest

import registry_workers

from loraops.errors import NotFoundError


@pytest.fixture(scope="module")
def ctx():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["loraops.lora", "loraops.registry", "registry_workers"])
    return ctx


def test_concurrent_pushes_get_distinct_versions(ctx, registry, base, adapter_dir, db_url):
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    args = (db_url, registry.home, adapter_dir, "racy", barrier, results)
    procs = [ctx.Process(target=registry_workers.push_when_released, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    versions = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sorted(versions, key=str) == list(range(1, n + 1)), versions
    assert [v.version for v in registry.show("racy").versions] == list(range(1, n + 1))


def test_concurrent_first_opens_create_the_schema_once(ctx, db_url, _isolated_home):
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    args = (db_url, _isolated_home, barrier, results)
    procs = [ctx.Process(target=registry_workers.open_when_released, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == [0] * n  # every opener saw an empty, fully migrated registry


def test_killed_push_leaves_no_version(ctx, registry, base, adapter_dir, db_url):
    stored = ctx.Event()
    proc = ctx.Process(target=registry_workers.push_and_hang,
                       args=(db_url, registry.home, adapter_dir, "crashy", stored))
    proc.start()
    assert stored.wait(timeout=120), "the push never stored a blob"
    proc.kill()  # SIGKILL: no cleanup runs
    proc.join(timeout=30)
    assert list((registry.home / "blobs").glob("sha256/*/*"))  # it did get part-way
    assert registry.list_adapters() == []
    with pytest.raises(NotFoundError):
        registry.resolve("crashy")
    assert registry.push(adapter_dir, "crashy").version == 1  # the orphaned blobs do no harm
