"""What the fine-tuning routes do, as blocking calls (the routes run them off the event loop): store
an upload, create a job from a validated request, and map a tenant's ft model ids to the engine.

One FineTuning object per server, built by serve/server.py when the server has a registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loraops.errors import InvalidNameError, NotFoundError
from loraops.finetune.errors import ObjectNotFoundError, TooManyTokensError
from loraops.finetune.ids import TRAINING_FILE, engine_model_id, is_fine_tuned, registry_name
from loraops.finetune.spec import JobRequest
from loraops.finetune.store import FileRecord, FineTuneStore, JobRecord
from loraops.finetune.uploads import check_training_file
from loraops.registry import Registry
from loraops.registry.names import check_name
from loraops.serve.errors import BadRequestError, ModelNotFoundError
from loraops.serve.tenancy import Tenant


class ModelNotAvailableError(BadRequestError):
    code = "model_not_available"


@dataclass
class FineTuning:
    store: FineTuneStore
    registry: Registry
    base_name: str                  # the served base: what jobs fine-tune
    base_spec: str                  # how workers load it (name, absolute dir or .gguf)
    base_fingerprint: str
    tokenizer: Any                  # the base's: validates chat lines, counts tokens
    pin: Callable[[str], bool]      # registers "name@V" from the registry in the engine (server.RegistryWatcher.pin)
    max_upload_bytes: int = 512 << 20
    max_rank: int = 64              # the engine's slot rank: a job's adapter must be servable here

    # ---- files --------------------------------------------------------------------------------

    def upload(self, tenant: Tenant, filename: str, path: Path) -> FileRecord:
        check = check_training_file(path, self.tokenizer)
        return self.store.add_file(tenant.name, filename, path, check.records, check.tokens,
                                   tenant.fine_tuning.max_file_bytes)

    def training_file(self, tenant: Tenant, file_id: str | None, param: str) -> FileRecord | None:
        if file_id is None:
            return None
        f = self.store.file(tenant.name, file_id)
        if f is None or f.purpose != TRAINING_FILE:  # another tenant's file reads exactly like a missing one
            raise BadRequestError(f"invalid {param}: {file_id} is not one of your files with purpose "
                                  f"'{TRAINING_FILE}'", param=param)
        return f

    # ---- jobs ---------------------------------------------------------------------------------

    def create_job(self, tenant: Tenant, req: JobRequest) -> JobRecord:
        train = self.training_file(tenant, req.training_file, "training_file")
        val = self.training_file(tenant, req.validation_file, "validation_file")
        parent = self._parent(tenant, req.model)
        if parent is None and req.options.rank > self.max_rank:
            raise BadRequestError(f"loraops.rank {req.options.rank} is above {self.max_rank}, the largest rank this "
                                  f"server serves (--max-rank)", param="loraops.rank")
        name = self._registry_name(tenant, req.suffix)
        tokens = train.tokens * req.hyperparameters["n_epochs"]
        quota = tenant.fine_tuning
        if tokens > quota.max_tokens_per_job:
            raise TooManyTokensError(
                f"this job would train on {tokens:,} tokens ({train.tokens:,} in {train.id} × "
                f"{req.hyperparameters['n_epochs']} epochs), over your quota of {quota.max_tokens_per_job:,} "
                f"per job; use fewer epochs or a smaller file", param="training_file")
        options = req.options_dict()
        options["alpha"] = options["alpha"] or 2.0 * options["rank"]
        return self.store.create_job(
            quota.max_concurrent_jobs, tenant=tenant.name, model=req.model, base_name=self.base_name,
            base_spec=self.base_spec, parent=parent, training_file=train.id,
            validation_file=val.id if val else None, training_digest=train.digest,
            validation_digest=val.digest if val else None, suffix=req.suffix, seed=req.seed,
            user_metadata=req.metadata, hyperparameters=req.hyperparameters, options=options, registry_name=name)

    def _parent(self, tenant: Tenant, model: str) -> str | None:
        """None to start from the base, or the registry "name@V" to continue from. Anything the
        tenant may not fine-tune is refused with one message, whether it exists or not."""
        refused = ModelNotAvailableError(f"model {model!r} is not available for fine-tuning or does not exist: "
                                         f"use {self.base_name!r}, one of your adapters or one of your "
                                         f"fine-tuned models", param="model")
        if model == self.base_name:
            if not tenant.can_use(model, self.base_name):
                raise refused
            return None
        if is_fine_tuned(model):
            hit = self.store.model_version(tenant.name, model)
            if hit is None:
                raise refused
            return engine_model_id(*hit)
        if not tenant.can_use(model, self.base_name):
            raise refused
        try:
            version = self.registry.resolve(model)
        except (NotFoundError, InvalidNameError):
            raise refused from None
        if version.base_fingerprint != self.base_fingerprint:
            raise ModelNotAvailableError(f"adapter {version.ref} was trained on another base than "
                                         f"{self.base_name!r}, the one this server fine-tunes", param="model")
        return version.ref

    def _registry_name(self, tenant: Tenant, suffix: str | None) -> str:
        name = registry_name(tenant.name, suffix)
        try:
            check_name(name)
        except InvalidNameError:
            raise BadRequestError(f"the model name {name!r} (tenant-suffix) is not a valid registry name: use a "
                                  f"shorter suffix of lower-case letters, digits, '.', '_' or '-'",
                                  param="suffix") from None
        try:
            owner = self.registry.show(name).tenant
        except NotFoundError:
            return name
        if owner != tenant.name:
            raise BadRequestError(f"suffix {suffix!r} cannot be used: the registry adapter {name!r} belongs to "
                                  f"someone else; choose another suffix", param="suffix")
        return name

    def job(self, tenant: Tenant, job_id: str) -> JobRecord:
        job = self.store.job(tenant.name, job_id)
        if job is None:
            raise ObjectNotFoundError(f"no fine-tuning job {job_id!r}", param="fine_tuning_job_id")
        return job

    # ---- fine-tuned models --------------------------------------------------------------------

    def engine_model(self, tenant: Tenant, model: str) -> str:
        """The engine's id for `tenant`'s fine-tuned model or checkpoint `model`, registered in the
        engine on first use. Blocking (a lookup, maybe a registry fetch). Raises ModelNotFoundError
        for anything else, exactly as for an unknown model."""
        hit = self.store.model_version(tenant.name, model)
        if hit is None or not self.pin(engine_model_id(*hit)):
            raise ModelNotFoundError(f"the model {model!r} does not exist", param="model")
        return engine_model_id(*hit)

    def models(self, tenant: Tenant) -> list[str]:
        return self.store.models(tenant.name)
