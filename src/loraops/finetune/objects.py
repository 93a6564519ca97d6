"""Store records -> the JSON objects of OpenAI's API, field for field as the official client's types
(openai/types/file_object.py, openai/types/fine_tuning/*.py) declare them. Our additions to a job
go in one `loraops` object, which the client keeps as an extra field."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraops.finetune.store import CheckpointRecord, EventRecord, FileRecord, JobRecord, Page


def file_object(f: FileRecord) -> dict:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "status_details": None, "expires_at": None}


def job_object(j: JobRecord) -> dict:
    return {
        "id": j.id, "object": "fine_tuning.job", "created_at": j.created_at, "error": j.error,
        "fine_tuned_model": j.fine_tuned_model, "finished_at": j.finished_at,
        "hyperparameters": j.hyperparameters, "model": j.model, "organization_id": j.tenant,
        "result_files": [j.result_file] if j.result_file else [], "seed": j.seed, "status": j.status,
        "trained_tokens": j.trained_tokens, "training_file": j.training_file,
        "validation_file": j.validation_file, "estimated_finish": None, "integrations": [],
        "metadata": j.user_metadata, "user_provided_suffix": j.suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": j.hyperparameters}},
        "loraops": {**j.options, "base": j.base_name, "parent": j.parent,
                    "registry_version": (f"{j.registry_name}@{j.registry_version}"
                                         if j.registry_version is not None else None),
                    "curation": j.report.get("curation"), "evaluation": j.report.get("evaluation"),
                    "gate": j.report.get("gate")},
    }


def event_object(e: EventRecord) -> dict:
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": e.created_at, "level": e.level,
            "message": e.message, "data": e.data, "type": e.type}


def checkpoint_object(c: CheckpointRecord) -> dict:
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": c.created_at,
            "fine_tuned_model_checkpoint": c.model_id, "fine_tuning_job_id": c.job_id, "metrics": c.metrics,
            "step_number": c.step}


def list_object(page: Page, to_json) -> dict:
    data = [to_json(item) for item in page.items]
    return {"object": "list", "data": data, "has_more": page.has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
