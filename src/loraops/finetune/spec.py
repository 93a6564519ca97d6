"""The body of `POST /v1/fine_tuning/jobs` -> a validated JobRequest; every mistake is a
BadRequestError (400) naming its field.

OpenAI's fields: model, training_file, validation_file, hyperparameters (deprecated there in favour
of method.supervised.hyperparameters; both are accepted, not together), suffix, seed, metadata,
integrations (refused: none are supported). Ours, in a `loraops` object (the openai client sends it
with extra_body={"loraops": {...}}): rank, alpha, targets, replay, auto_promote, checkpoint_every.

"auto" hyperparameters resolve to fixed values (AUTO) when the job is created, so the job object
always reports what it trains with. The learning rate is BASE_LR × learning_rate_multiplier.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field

from loraops.finetune.ids import SUFFIX_RE
from loraops.serve.errors import BadRequestError

BASE_LR = 2e-4
AUTO = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed", "metadata",
          "integrations", "loraops"}
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Options:
    """The `loraops` extension: what OpenAI's API has no field for."""

    rank: int = 8
    alpha: float | None = None          # None: 2 × rank
    targets: str = "q_proj,v_proj"
    replay: int = 0                     # general-text passages mixed in against forgetting
    auto_promote: bool = False          # to production if the promotion gate passes
    checkpoint_every: int = 100         # steps between checkpoints (resume points, servable checkpoints)


@dataclass(frozen=True)
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, float | int]    # n_epochs, batch_size, learning_rate_multiplier: resolved
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    options: Options = field(default_factory=Options)

    @property
    def learning_rate(self) -> float:
        return BASE_LR * self.hyperparameters["learning_rate_multiplier"]

    def options_dict(self) -> dict:
        return asdict(self.options)


def _int(value, param: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequestError(f"{param} must be an integer from {lo} to {hi}, got {value!r}", param=param)
    return value


def _str(value, param: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequestError(f"{param} must be a non-empty string of at most {max_len} characters", param=param)
    return value


def _hyperparameters(raw, param: str) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequestError(f"{param} must be an object", param=param)
    unknown = sorted(set(raw) - set(AUTO))
    if unknown:
        raise BadRequestError(f"unknown hyperparameter {unknown[0]!r}: use n_epochs, batch_size, "
                              f"learning_rate_multiplier", param=f"{param}.{unknown[0]}")
    out = dict(AUTO)
    for name in ("n_epochs", "batch_size"):
        if raw.get(name, "auto") != "auto":
            out[name] = _int(raw[name], f"{param}.{name}", 1, 50 if name == "n_epochs" else 256)
    lrm = raw.get("learning_rate_multiplier", "auto")
    if lrm != "auto":
        if isinstance(lrm, bool) or not isinstance(lrm, (int, float)) or not 0 < lrm <= 1000:
            raise BadRequestError(f"{param}.learning_rate_multiplier must be a number in (0, 1000], got {lrm!r}",
                                  param=f"{param}.learning_rate_multiplier")
        out["learning_rate_multiplier"] = float(lrm)
    return out


def _method_hyperparameters(body: dict) -> dict:
    method = body.get("method")
    if method is None:
        return _hyperparameters(body.get("hyperparameters"), "hyperparameters")
    if body.get("hyperparameters") is not None:
        raise BadRequestError("pass hyperparameters either in method.supervised or at the top level, not both",
                              param="hyperparameters")
    if not isinstance(method, dict) or method.get("type") != "supervised":
        kind = method.get("type") if isinstance(method, dict) else method
        raise BadRequestError(f"method.type {kind!r} is not supported: only 'supervised'", param="method.type")
    supervised = method.get("supervised") or {}
    if not isinstance(supervised, dict):
        raise BadRequestError("method.supervised must be an object", param="method.supervised")
    return _hyperparameters(supervised.get("hyperparameters"), "method.supervised.hyperparameters")


def _metadata(raw) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) > 16:
        raise BadRequestError("metadata must be an object of at most 16 keys", param="metadata")
    for k, v in raw.items():
        if not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise BadRequestError("metadata keys must be strings of at most 64 characters and values strings "
                                  "of at most 512", param="metadata")
    return dict(raw)


def _options(raw) -> Options:
    if raw is None:
        return Options()
    if not isinstance(raw, dict):
        raise BadRequestError("loraops must be an object", param="loraops")
    unknown = sorted(set(raw) - set(Options.__dataclass_fields__))
    if unknown:
        raise BadRequestError(f"unknown loraops option {unknown[0]!r}", param=f"loraops.{unknown[0]}")
    d = Options()
    alpha = raw.get("alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
        raise BadRequestError(f"loraops.alpha must be a positive number, got {alpha!r}", param="loraops.alpha")
    auto_promote = raw.get("auto_promote", d.auto_promote)
    if not isinstance(auto_promote, bool):
        raise BadRequestError("loraops.auto_promote must be true or false", param="loraops.auto_promote")
    return Options(rank=_int(raw.get("rank", d.rank), "loraops.rank", 1, 256),
                   alpha=float(alpha) if alpha is not None else None,
                   targets=_str(raw.get("targets", d.targets), "loraops.targets"),
                   replay=_int(raw.get("replay", d.replay), "loraops.replay", 0, 100_000),
                   auto_promote=auto_promote,
                   checkpoint_every=_int(raw.get("checkpoint_every", d.checkpoint_every),
                                         "loraops.checkpoint_every", 1, 1_000_000))


def parse_job_request(body: dict) -> JobRequest:
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequestError(f"unrecognized request argument {unknown[0]!r}", param=unknown[0])
    if body.get("integrations"):
        raise BadRequestError("integrations are not supported by this server", param="integrations")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX_RE.fullmatch(suffix)):
        raise BadRequestError(f"invalid suffix {str(suffix)[:80]!r}: use lower-case letters, digits, '.', '_' "
                              f"or '-', starting with a letter or digit", param="suffix")
    seed = body.get("seed")
    validation = body.get("validation_file")
    return JobRequest(
        model=_str(body.get("model"), "model", 400),
        training_file=_str(body.get("training_file"), "training_file", 64),
        validation_file=_str(validation, "validation_file", 64) if validation is not None else None,
        hyperparameters=_method_hyperparameters(body),
        suffix=suffix or None,
        seed=_int(seed, "seed", 0, MAX_SEED) if seed is not None else secrets.randbelow(MAX_SEED),
        metadata=_metadata(body.get("metadata")),
        options=_options(body.get("loraops")),
    )
