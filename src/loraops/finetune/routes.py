"""OpenAI's files and fine-tuning routes, on the same server and keys as /v1/chat/completions.

    POST   /v1/files                       multipart: file, purpose=fine-tune
    GET    /v1/files                       after, limit, order, purpose
    GET    /v1/files/{id}                  DELETE /v1/files/{id}      GET /v1/files/{id}/content
    POST   /v1/fine_tuning/jobs            GET /v1/fine_tuning/jobs   (after, limit)
    GET    /v1/fine_tuning/jobs/{id}       POST /v1/fine_tuning/jobs/{id}/cancel
    GET    /v1/fine_tuning/jobs/{id}/events       GET /v1/fine_tuning/jobs/{id}/checkpoints

Shared state comes through the server's dependencies (serve/deps.py: the tenant, the bounded JSON
body) and one of ours: the FineTuning service (`AppState.finetune`, None when the server has no
registry: then every route here answers 404). Errors are ServeErrors, rendered as
OpenAI error bodies by the app's handler; another tenant's file or job answers exactly like an
unknown one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from loraops.finetune.errors import FileTooLargeError, FineTuningDisabledError, ObjectNotFoundError
from loraops.finetune.objects import checkpoint_object, event_object, file_object, job_object, list_object
from loraops.finetune.ids import RESULTS_FILE, TRAINING_FILE
from loraops.finetune.spec import parse_job_request
from loraops.serve.deps import app_state, json_body
from loraops.serve.deps import tenant as tenant_of
from loraops.serve.errors import BadRequestError
from loraops.serve.tenancy import Tenant

router = APIRouter(prefix="/v1")
MULTIPART_SLACK = 64 << 10  # form boundaries and headers around the file's bytes


def fine_tuning(request: Request):
    """The server's finetune.service.FineTuning (routes.py imports nothing that needs the registry)."""
    ft = app_state(request).finetune
    if ft is None:
        raise FineTuningDisabledError("fine-tuning is not enabled on this server: start it with --registry")
    return ft


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequestError(f"limit must be an integer from 1 to {most}, got {raw!r}", param="limit")
    return int(raw)


# ---- files --------------------------------------------------------------------------------------


def _limited(request: Request, limit: int) -> Request:
    """The request with a body that raises FileTooLargeError once it passes `limit` bytes, so a
    too-large upload is refused while it streams in (Content-Length may be absent or wrong)."""
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise FileTooLargeError(f"the upload exceeds this server's limit of {limit - MULTIPART_SLACK:,} "
                                        f"bytes per file", param="file")
        return message

    return Request(request.scope, receive)


def _spill(upload: UploadFile, directory: Path) -> Path:
    """The uploaded part, copied to a file beside the blob store (the same file system)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".upload-", dir=directory)
    with os.fdopen(fd, "wb") as out:
        upload.file.seek(0)
        while chunk := upload.file.read(1 << 20):
            out.write(chunk)
    return Path(name)


@router.post("/files", summary="Upload a training file (multipart: file, purpose=fine-tune)")
async def create_file(request: Request, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    limit = ft.max_upload_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FileTooLargeError(f"the upload exceeds this server's limit of {ft.max_upload_bytes:,} bytes per "
                                f"file", param="file")
    form = await _limited(request, limit).form(max_files=1, max_fields=8)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != TRAINING_FILE:
            raise BadRequestError(f"purpose must be '{TRAINING_FILE}' (the only one this server supports), "
                                  f"got {purpose!r}", param="purpose")
        if not isinstance(upload, UploadFile):
            raise BadRequestError("the form has no file part named 'file'", param="file")
        if upload.size is not None and upload.size > ft.max_upload_bytes:
            raise FileTooLargeError(f"the file has {upload.size:,} bytes; this server's limit is "
                                    f"{ft.max_upload_bytes:,} bytes per file", param="file")
        filename = Path(upload.filename or "upload.jsonl").name[:255] or "upload.jsonl"
        path = await run_in_threadpool(_spill, upload, ft.store.blobs.root)
        try:
            record = await run_in_threadpool(ft.upload, tenant, filename, path)
        finally:
            path.unlink(missing_ok=True)
    finally:
        await form.close()
    return file_object(record)


@router.get("/files", summary="List your files")
def list_files(request: Request, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequestError("order must be 'asc' or 'desc'", param="order")
    page = ft.store.list_files(tenant.name, request.query_params.get("after"), _limit(request, 10_000, 10_000),
                               newest_first=order == "desc", purpose=request.query_params.get("purpose"))
    return list_object(page, file_object)


def _file(ft, tenant: Tenant, file_id: str):
    """The tenant's file, or 404 (for another tenant's too)."""
    f = ft.store.file(tenant.name, file_id)
    if f is None:
        raise ObjectNotFoundError(f"No such File object: {file_id}", param="file_id")
    return f


@router.get("/files/{file_id}", summary="A file's metadata")
def get_file(file_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    return file_object(_file(ft, tenant, file_id))


@router.get("/files/{file_id}/content", summary="A file's bytes (verified against their sha256)")
def file_content(file_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    f = _file(ft, tenant, file_id)
    media = "text/csv" if f.purpose == RESULTS_FILE else "application/jsonl"
    return Response(ft.store.file_bytes(f.digest), media_type=media)


@router.delete("/files/{file_id}", summary="Delete a file")
def delete_file(file_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    if not ft.store.delete_file(tenant.name, file_id):
        raise ObjectNotFoundError(f"No such File object: {file_id}", param="file_id")
    return {"id": file_id, "object": "file", "deleted": True}


# ---- fine-tuning jobs ---------------------------------------------------------------------------


@router.post("/fine_tuning/jobs", summary="Create a fine-tuning job")
async def create_job(tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning), body: dict = Depends(json_body)):
    req = parse_job_request(body)
    return job_object(await run_in_threadpool(ft.create_job, tenant, req))


@router.get("/fine_tuning/jobs", summary="List your fine-tuning jobs, newest first")
def list_jobs(request: Request, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    page = ft.store.list_jobs(tenant.name, request.query_params.get("after"), _limit(request, 20, 100))
    return list_object(page, job_object)


@router.get("/fine_tuning/jobs/{job_id}", summary="A fine-tuning job")
def get_job(job_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    return job_object(ft.job(tenant, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel", summary="Cancel a fine-tuning job")
def cancel_job(job_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    job = ft.store.cancel(tenant.name, job_id)
    if job is None:
        raise ObjectNotFoundError(f"no fine-tuning job {job_id!r}", param="fine_tuning_job_id")
    return job_object(job)


@router.get("/fine_tuning/jobs/{job_id}/events", summary="A job's events, newest first")
def list_events(job_id: str, request: Request, tenant: Tenant = Depends(tenant_of),
                ft=Depends(fine_tuning)):
    ft.job(tenant, job_id)
    page = ft.store.list_events(job_id, request.query_params.get("after"), _limit(request, 20, 1000))
    return list_object(page, event_object)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", summary="A job's servable checkpoints, newest first")
def list_checkpoints(job_id: str, request: Request, tenant: Tenant = Depends(tenant_of),
                     ft=Depends(fine_tuning)):
    ft.job(tenant, job_id)
    page = ft.store.list_checkpoints(job_id, request.query_params.get("after"), _limit(request, 10, 100))
    return list_object(page, checkpoint_object)
