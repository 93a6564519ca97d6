"""Object ids and fine-tuned model ids.

Objects get OpenAI-style random ids: "file-…", "ftjob-…", "ftevent-…", "ftckpt-…" (24 letters and
digits after the prefix).

A job's model id is OpenAI's `ft:<base>:<tenant>:<suffix>:<job id>` (the suffix may be empty, as
in OpenAI's "ft:gpt-4o-mini:org::abc"), a checkpoint's the same plus `:ckpt-step-<N>`. These ids
are names for registry versions:

    registry adapter   <tenant>-<suffix>       (suffix "ft" when none is given), one per tenant and
                                               suffix, so a tenant's jobs with one suffix push
                                               versions 1, 2, 3 … of one adapter, with lineage
    the job's model    <tenant>-<suffix>@<V>   V: the version of the job's final adapter
    a checkpoint       <tenant>-<suffix>@<V'>  each checkpoint is a version of its own

The engine serves the version under that "name@V" id (the grammar it already has); the job and
checkpoint tables hold the ft id -> version mapping, so resolving an id is one lookup keyed by
the tenant, and another tenant's id resolves exactly like one that does not exist
(finetune/serving.py).
"""

from __future__ import annotations

import re
import secrets
import string

TRAINING_FILE = "fine-tune"            # the purpose of uploads
RESULTS_FILE = "fine-tune-results"     # the purpose of the metrics CSV a finished job leaves
MODEL_PREFIX = "ft:"
DEFAULT_SUFFIX = "ft"
SUFFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return f"{prefix}-{''.join(secrets.choice(_ALPHABET) for _ in range(24))}"


def is_fine_tuned(model: str) -> bool:
    return isinstance(model, str) and model.startswith(MODEL_PREFIX)


def model_id(base: str, tenant: str, suffix: str | None, job_id: str) -> str:
    return f"{MODEL_PREFIX}{base}:{tenant}:{suffix or ''}:{job_id}"


def checkpoint_model_id(job_model: str, step: int) -> str:
    return f"{job_model}:ckpt-step-{step}"


def registry_name(tenant: str, suffix: str | None) -> str:
    """The registry adapter a tenant's jobs with this suffix register versions of (may be invalid
    as a registry name: the caller validates it with registry.names.check_name)."""
    return f"{tenant}-{suffix or DEFAULT_SUFFIX}"


def engine_model_id(registry_name: str, version: int) -> str:
    """The id the serving engine knows a fine-tuned model's registry version by: the one place
    where ft ids meet the engine's model-id grammar."""
    return f"{registry_name}@{version}"
