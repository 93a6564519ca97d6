"""Serving options: plain dataclasses, validated once by `check_options` (no heavy imports here, so
the CLI can refuse bad options before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loraops.errors import ConfigError

BATCHED_SPAN = 8   # kv.py attends spans of up to this many new tokens (decode + drafts) in one padded call


@dataclass
class EngineConfig:
    max_slots: int = 8            # adapters resident at once
    max_rank: int = 64            # largest adapter rank a slot holds
    max_batch: int = 16           # running sequences per step
    max_kv_tokens: int = 16384    # KV cache size in tokens (all sequences together)
    block_size: int = 16
    max_queue: int = 64           # waiting requests before 503
    max_tokens_cap: int = 1024    # the largest max_tokens a request may ask for
    max_prefill_tokens: int = 4096  # prompt tokens admitted per step
    speculate: int = 4            # n-gram draft tokens per greedy sequence and step (0: no speculation)
    speculate_step_tokens: int = 32  # drafts only while a step has at most this many tokens in all
    screen_head: bool = True      # greedy tokens: int8 logits screen, fp32 check (exact; head.py)
    decoder: bool = True          # Llama / Gemma 3 layers through ServeDecoder (decoder.py); False: transformers'


@dataclass
class ClusterOptions:
    """`loraops serve --ray`: the engine as Ray Serve replicas behind an ingress (serve/cluster/)."""

    replicas: int = 2                     # engine replicas, each with the base and its own slot pool
    address: str | None = None            # None: a Ray instance on this machine only; "auto" / HOST:PORT: join
    threads_per_replica: int = 2          # torch threads in each engine replica
    replica_cpus: float | None = None     # Ray CPUs reserved per engine replica; None: threads_per_replica
    ingress_replicas: int = 1             # HTTP ingress replicas (auth, limits, tokenizing, routing)
    ingress_cpus: float = 0.5
    affinity: bool = True                 # route by adapter (Ray Serve model multiplexing); False: by load only
    view_s: float = 1.0                   # how often each ingress refreshes its view of the replicas


@dataclass
class HttpLimits:
    """Bounds on what one HTTP request may cost before the engine sees it (docs/serving.md, "Limits")."""

    max_body_bytes: int = 2 * 1024 * 1024   # JSON bodies over this are 413, unread
    max_prompt_chars: int = 262_144         # prompt / messages characters, checked before tokenizing
    grammar_cache: int = 128                # compiled response_format grammars kept (by schema digest)
    max_choices: int = 8                    # the largest n / best_of of one request


@dataclass
class ServeOptions:
    base: str
    adapters: dict[str, str] = field(default_factory=dict)     # name -> directory
    tenants: str | None = None
    insecure_no_auth: bool = False
    admin_key: str | None = None
    registry: bool = False
    registry_poll_s: float = 10.0
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None            # torch threads; None: torch's default
    quantize: str | None = None           # "int8": int8 base linears (models/quantize.py), LoRA in fp32
    workers: int = 0                      # fine-tuning workers in this process (needs the registry)
    max_upload_bytes: int = 512 << 20     # largest file POST /v1/files takes (413 past it)
    engine: EngineConfig = field(default_factory=EngineConfig)
    http: HttpLimits = field(default_factory=HttpLimits)
    metrics_key: str | None = None        # /metrics and /ready details: this key or the admin key
    cluster: ClusterOptions | None = None  # --ray: scale out on Ray Serve


def check_options(opts: ServeOptions) -> None:
    """Refuse unsafe or contradictory options before anything is loaded."""
    if opts.tenants is None and not opts.insecure_no_auth:
        raise ConfigError("refusing to serve without authentication: pass --tenants FILE "
                          "(or --insecure-no-auth for local experiments)")
    if opts.tenants is not None and opts.insecure_no_auth:
        raise ConfigError("--tenants and --insecure-no-auth contradict each other; pass one")
    if opts.quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {opts.quantize!r}: only int8 is supported")
    if opts.workers < 0 or opts.max_upload_bytes < 1:
        raise ConfigError("--workers must be >= 0 and --max-upload-bytes >= 1")
    if opts.workers and not opts.registry:
        raise ConfigError("--workers runs fine-tuning jobs, which live in the registry: add --registry")
    if opts.threads is not None and opts.threads < 1:
        raise ConfigError("--threads must be >= 1")
    if opts.cluster is not None:
        _check_cluster(opts)
    e = opts.engine
    for name in ("max_slots", "max_rank", "max_batch", "max_kv_tokens", "max_queue", "max_tokens_cap"):
        if getattr(e, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= e.speculate <= BATCHED_SPAN - 1:
        raise ConfigError(f"--speculate must be between 0 and {BATCHED_SPAN - 1}")
    if e.speculate_step_tokens < 0:
        raise ConfigError("--speculate-step-tokens must be >= 0")
    for name in ("max_body_bytes", "max_prompt_chars", "grammar_cache", "max_choices"):
        if getattr(opts.http, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("admin_key", "metrics_key"):
        key = getattr(opts, name)
        if key is not None and len(key) < 8:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 8 characters")


def _check_cluster(opts: ServeOptions) -> None:
    from loraops.models.load import is_encoder

    c = opts.cluster
    if is_encoder(opts.base):
        raise ConfigError(f"{opts.base} is an encoder (classification): --ray serves causal-LM bases; "
                          "serve it without --ray")
    if opts.threads is not None:
        raise ConfigError("--threads sets the single-process server's threads; with --ray use --threads-per-replica")
    if opts.workers:
        raise ConfigError("with --ray, run fine-tuning jobs in `loraops worker` processes (--workers runs them "
                          "inside the single-process server)")
    for name in ("replicas", "threads_per_replica", "ingress_replicas"):
        if getattr(c, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if c.replica_cpus is not None and not c.replica_cpus > 0:
        raise ConfigError("--replica-cpus must be > 0")
    if not c.ingress_cpus > 0:
        raise ConfigError("--ingress-cpus must be > 0")
    if not c.view_s > 0:
        raise ConfigError("the replica view interval must be > 0")
