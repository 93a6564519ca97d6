"""Self-serve fine-tuning: OpenAI's /v1/files and /v1/fine_tuning/jobs over our pipeline.

ids.py (object ids, ft model ids and how they name registry versions), spec.py (the job request),
uploads.py (checking a training file), store.py (the tables, the job queue and its leases),
objects.py (OpenAI's JSON shapes), service.py and routes.py (the HTTP side), pipeline.py (one job:
curate, train, register, evaluate, gate), worker.py (`loraops worker`, `serve --workers N`).
docs/fine-tuning-api.md is the user's guide.
"""

from importlib import import_module

# Lazy, as in loraops.serve: the API app imports routes.py, which must not need the registry extra.
_EXPORTS = {"FineTuneStore": "store", "FineTuning": "service", "Worker": "worker", "WorkerOptions": "worker",
            "WorkerPool": "worker", "run_worker": "worker"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'loraops.finetune' has no attribute {name!r}")
    return getattr(import_module(f"loraops.finetune.{_EXPORTS[name]}"), name)
