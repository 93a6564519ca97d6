"""Functions run in child processes by test_registry_processes.py (importable by module name, as
multiprocessing needs). They get url/home explicitly: a forkserver child does not see the test's
environment variables."""

import time

from loraops.registry import Registry
from loraops.registry.blobs import BlobStore


def open_when_released(url, home, barrier, results) -> None:
    barrier.wait()
    try:
        with Registry(url=url, home=home) as registry:
            results.put(len(registry.list_adapters()))
    except Exception as e:
        results.put(repr(e))


def push_when_released(url, home, adapter_dir, name, barrier, results) -> None:
    registry = Registry(url=url, home=home)
    barrier.wait()  # every worker is warm: the pushes start together
    try:
        results.put(registry.push(adapter_dir, name, created_by="worker").version)
    except Exception as e:  # report it to the test rather than die silently
        results.put(repr(e))


def push_and_hang(url, home, adapter_dir, name, stored) -> None:
    """Stall inside the upload, after the first blob is in place, until killed."""
    put_file = BlobStore.put_file

    def put_then_hang(self, src):
        digest = put_file(self, src)
        stored.set()
        time.sleep(600)
        return digest

    BlobStore.put_file = put_then_hang
    Registry(url=url, home=home).push(adapter_dir, name)
