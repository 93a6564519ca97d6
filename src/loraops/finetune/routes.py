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
unknown one. Client strings reach the database only as ids of the right shape (ids.is_object_id)
or a known purpose. Uploads are bounded by --max-upload-bytes, the JSON body of a job by
--max-body-bytes (json_body). The OpenAPI document describes every route (schemas.py).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from loraops.errors import BlobCorruptError
from loraops.finetune import schemas
from loraops.finetune.errors import FileCorruptError, FileTooLargeError, FineTuningDisabledError
from loraops.finetune.ids import RESULTS_FILE, TRAINING_FILE, is_object_id
from loraops.finetune.objects import Page, checkpoint_object, event_object, file_object, job_object, list_object
from loraops.finetune.spec import parse_job_request
from loraops.serve.deps import app_state, json_body
from loraops.serve.deps import tenant as tenant_of
from loraops.serve.errors import BadRequestError
from loraops.serve.schemas import request_body
from loraops.serve.tenancy import Tenant

log = logging.getLogger("loraops.finetune")
router = APIRouter(prefix="/v1", tags=["fine-tuning"])
MULTIPART_SLACK = 64 << 10  # form boundaries and headers around the file's bytes
DIGITS = re.compile(r"[0-9]{1,9}")   # ASCII only: str.isdigit() accepts "²", which int() refuses
PURPOSES = (TRAINING_FILE, RESULTS_FILE)


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
    if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise BadRequestError(f"limit must be an integer from 1 to {most}, got {raw[:40]!r}", param="limit")
    return int(raw)


def _after(request: Request, prefix: str) -> str | None:
    """The `after` cursor: an id of this list (the store refuses one that is not in it)."""
    after = request.query_params.get("after")
    if after is not None and not is_object_id(after, prefix):
        raise BadRequestError(f"after={after[:64]!r} is not an object of this list", param="after")
    return after


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


def _filename(raw: str | None) -> str:
    """The name to keep: its last path component, without control characters (PostgreSQL refuses
    NUL in text), at most 255 characters."""
    name = Path("".join(c for c in raw or "" if c.isprintable())).name[:255]
    return name or "upload.jsonl"


@router.post("/files", summary="Upload a training file (multipart: file, purpose=fine-tune)",
             openapi_extra=request_body(schemas.FileUpload, "multipart/form-data"),
             responses={**schemas.ok(schemas.FileObject, "The stored file"),
                        **schemas.errors(400, 401, 404, 413, 429)})
async def create_file(request: Request, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    limit = ft.max_upload_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 15 or int(declared) > limit):
        raise FileTooLargeError(f"the upload exceeds this server's limit of {ft.max_upload_bytes:,} bytes per "
                                f"file", param="file")
    form = await _limited(request, limit).form(max_files=1, max_fields=8)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != TRAINING_FILE:
            raise BadRequestError(f"purpose must be '{TRAINING_FILE}' (the only one this server supports), "
                                  f"got {str(purpose)[:64]!r}", param="purpose")
        if not isinstance(upload, UploadFile):
            raise BadRequestError("the form has no file part named 'file'", param="file")
        if upload.size is not None and upload.size > ft.max_upload_bytes:
            raise FileTooLargeError(f"the file has {upload.size:,} bytes; this server's limit is "
                                    f"{ft.max_upload_bytes:,} bytes per file", param="file")
        path = await run_in_threadpool(_spill, upload, ft.store.blobs.root)
        try:
            record = await run_in_threadpool(ft.upload, tenant, _filename(upload.filename), path)
        finally:
            path.unlink(missing_ok=True)
    finally:
        await form.close()
    return file_object(record)


@router.get("/files", summary="List your files", openapi_extra=schemas.page_parameters(10_000, 10_000, order=True),
            responses={**schemas.ok(schemas.FileList, "Your files"), **schemas.errors(400, 401, 404)})
def list_files(request: Request, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    order, purpose = request.query_params.get("order", "desc"), request.query_params.get("purpose")
    if order not in ("asc", "desc"):
        raise BadRequestError("order must be 'asc' or 'desc'", param="order")
    after, limit = _after(request, "file"), _limit(request, 10_000, 10_000)
    if purpose is not None and purpose not in PURPOSES:   # no file has it: nothing to look up
        return list_object(Page([], False), file_object)
    page = ft.store.list_files(tenant.name, after, limit, newest_first=order == "desc", purpose=purpose)
    return list_object(page, file_object)


_NOT_FOUND = schemas.errors(401, 404)


@router.get("/files/{file_id}", summary="A file's metadata",
            responses={**schemas.ok(schemas.FileObject, "The file"), **_NOT_FOUND})
def get_file(file_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    return file_object(ft.file(tenant, file_id))


@router.get("/files/{file_id}/content", summary="A file's bytes (verified against their sha256)",
            response_class=Response, responses={
    200: {"description": "The bytes: JSONL for training files, CSV for a job's results", "content": {
        media: {"schema": {"type": "string"}} for media in ("application/jsonl", "text/csv")}}, **_NOT_FOUND})
def file_content(file_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    f = ft.file(tenant, file_id)
    try:
        data = ft.store.file_bytes(f.digest)
    except BlobCorruptError as e:      # the server's disk, not the request: a 500 that says so
        log.error("file %s of tenant %s: %s", f.id, tenant.name, e)
        raise FileCorruptError(f"the bytes of {f.id} are damaged on the server (they no longer match their "
                               f"sha256); the operator has been told in the server's log") from None
    return Response(data, media_type="text/csv" if f.purpose == RESULTS_FILE else "application/jsonl")


@router.delete("/files/{file_id}", summary="Delete a file (not while an unfinished job uses it)",
               responses={**schemas.ok(schemas.FileDeleted, "Deleted"), **schemas.errors(400, 401, 404)})
def delete_file(file_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    ft.delete_file(tenant, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


# ---- fine-tuning jobs ---------------------------------------------------------------------------


@router.post("/fine_tuning/jobs", summary="Create a fine-tuning job",
             openapi_extra=request_body(schemas.JobCreateRequest),
             responses={**schemas.ok(schemas.FineTuningJob, "The job, validating_files"),
                        **schemas.errors(400, 401, 404, 413, 429)})
async def create_job(tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning), body: dict = Depends(json_body)):
    req = parse_job_request(body)
    return job_object(await run_in_threadpool(ft.create_job, tenant, req))


_PAGE_ERRORS = schemas.errors(400, 401, 404)


@router.get("/fine_tuning/jobs", summary="List your fine-tuning jobs, newest first",
            openapi_extra=schemas.page_parameters(20, 100),
            responses={**schemas.ok(schemas.JobList, "Your jobs"), **_PAGE_ERRORS})
def list_jobs(request: Request, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    page = ft.store.list_jobs(tenant.name, _after(request, "ftjob"), _limit(request, 20, 100))
    return list_object(page, job_object)


@router.get("/fine_tuning/jobs/{job_id}", summary="A fine-tuning job",
            responses={**schemas.ok(schemas.FineTuningJob, "The job"), **_NOT_FOUND})
def get_job(job_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    return job_object(ft.job(tenant, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel", summary="Cancel a fine-tuning job that has not finished",
             responses={**schemas.ok(schemas.FineTuningJob, "The job, cancelled"), **schemas.errors(400, 401, 404)})
def cancel_job(job_id: str, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    return job_object(ft.cancel(tenant, job_id))


@router.get("/fine_tuning/jobs/{job_id}/events", summary="A job's events, newest first",
            openapi_extra=schemas.page_parameters(20, 1000),
            responses={**schemas.ok(schemas.EventList, "Events"), **_PAGE_ERRORS})
def list_events(job_id: str, request: Request, tenant: Tenant = Depends(tenant_of), ft=Depends(fine_tuning)):
    ft.job(tenant, job_id)
    page = ft.store.list_events(job_id, _after(request, "ftevent"), _limit(request, 20, 1000))
    return list_object(page, event_object)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", summary="A job's servable checkpoints, newest first",
            openapi_extra=schemas.page_parameters(10, 100),
            responses={**schemas.ok(schemas.CheckpointList, "Checkpoints"), **_PAGE_ERRORS})
def list_checkpoints(job_id: str, request: Request, tenant: Tenant = Depends(tenant_of),
                     ft=Depends(fine_tuning)):
    ft.job(tenant, job_id)
    page = ft.store.list_checkpoints(job_id, _after(request, "ftckpt"), _limit(request, 10, 100))
    return list_object(page, checkpoint_object)
