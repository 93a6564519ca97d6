"""`loraops serve --ray`: the Ray Serve application (three deployments) and the driver that runs it.

    HTTP -> Ray's proxy -> Ingress (x ingress_replicas) --multiplexed model id--> EngineReplica (x replicas)
                                   \\-- limits, run-time adapters, metrics --> SharedState (x 1)

Without --ray-address the driver starts a Ray instance of its own on this machine, every port of it
bound to 127.0.0.1, and stops it on exit; with one ("auto" or HOST:PORT) it joins that cluster and on exit
deletes only its application. Every Ray process gets RAY_USAGE_STATS_ENABLED=0 and the driver's
LORAOPS_* settings (registry URL, home, model cache), so all replicas use one registry.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from loraops.errors import ConfigError
from loraops.serve.config import ServeOptions, check_options

log = logging.getLogger("loraops.serve")

APP = "loraops"
FORWARDED_ENV = ("LORAOPS_HOME", "LORAOPS_MODELS", "LORAOPS_DB_URL", "LORAOPS_DASHBOARD_KEY", "HF_HUB_OFFLINE",
                 "TRANSFORMERS_OFFLINE", "HF_HOME")


def replica_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0"}


def build_app(opts: ServeOptions):
    """The Serve application for `opts` (validated; opts.cluster set)."""
    from ray import serve

    from loraops.serve.cluster.ingress import Ingress
    from loraops.serve.cluster.replica import EngineReplica
    from loraops.serve.cluster.shared import SharedState
    from loraops.serve.tenancy import Tenants

    c, e = opts.cluster, opts.engine
    tenants = Tenants.load(opts.tenants) if opts.tenants else None     # read here: no node needs the file
    runtime = {"env_vars": replica_env()}
    per_replica = e.max_batch + e.max_queue                # what one engine runs and queues (its FairQueue)
    quiet = {"enable_access_log": False}                   # internal calls: a log line each would drown the rest
    shared = serve.deployment(SharedState, name="SharedState", num_replicas=1, max_ongoing_requests=1000,
                              ray_actor_options={"num_cpus": 0.05, "runtime_env": runtime},
                              logging_config=quiet).bind()
    engines = serve.deployment(
        EngineReplica, name="EngineReplica", num_replicas=c.replicas,
        ray_actor_options={"num_cpus": c.replica_cpus or c.threads_per_replica, "runtime_env": runtime},
        # An ingress may hold as many requests waiting to be assigned as the replicas run and queue:
        # a burst routes into the replicas' fair queues, not into 503s from Ray's router.
        max_ongoing_requests=per_replica, max_queued_requests=c.replicas * per_replica, health_check_period_s=5,
        graceful_shutdown_timeout_s=10, max_constructor_retry_count=2, logging_config=quiet).bind(opts, shared)
    ingress = serve.deployment(
        serve.ingress()(Ingress), name="Ingress", num_replicas=c.ingress_replicas,
        ray_actor_options={"num_cpus": c.ingress_cpus, "runtime_env": runtime},
        max_ongoing_requests=2 * c.replicas * per_replica + 64, max_constructor_retry_count=2,
    ).bind(opts, tenants, engines, shared)
    return ingress


def connect(opts: ServeOptions) -> bool:
    """Start or join Ray; True if this process started it (and must stop it)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    address = opts.cluster.address
    if address is None:
        # Ray 2.60 turns a 127.0.0.1 node address into the machine's outward address unless multi-node
        # clusters are off; with this switch (read when ray is imported) every Ray port is loopback only.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if address is None:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 logging_level=logging.WARNING, runtime_env={"env_vars": replica_env()})
    else:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env={"env_vars": replica_env()})
    try:
        _check_resources(opts, ray.cluster_resources().get("CPU", 0.0))
    except ConfigError:
        ray.shutdown()
        raise
    return address is None


def _check_resources(opts: ServeOptions, cpus: float) -> None:
    c = opts.cluster
    need = c.replicas * (c.replica_cpus or c.threads_per_replica) + c.ingress_replicas * c.ingress_cpus + 0.05
    if need > cpus:
        raise ConfigError(f"{c.replicas} engine replicas x {c.replica_cpus or c.threads_per_replica:g} CPUs and "
                          f"{c.ingress_replicas} ingress x {c.ingress_cpus:g} need {need:g} CPUs; the Ray cluster "
                          f"has {cpus:g}: lower --replicas or --threads-per-replica (or --replica-cpus), or add nodes")


def deploy(opts: ServeOptions):
    """Deploy the application on the connected cluster; returns once every replica is up."""
    from ray import serve

    serve.start(http_options={"host": opts.host, "port": opts.port})
    return serve.run(build_app(opts), name=APP, route_prefix="/")


def run(opts: ServeOptions) -> None:
    """Serve until SIGINT or SIGTERM, then delete the application (and stop Ray if we started it)."""
    check_options(opts)
    if opts.tenants is None:
        log.warning("--insecure-no-auth: every client can use every model; do not expose this server")
    opts.admin_key = opts.admin_key or os.environ.get("LORAOPS_ADMIN_KEY") or None
    opts.metrics_key = opts.metrics_key or os.environ.get("LORAOPS_METRICS_KEY") or None
    url = os.environ.get("LORAOPS_DB_URL", "")
    if opts.registry and opts.cluster.address is not None and not url.startswith("postgresql"):
        log.warning("the registry is SQLite (%s): every node must see that one file; on several machines use "
                    "PostgreSQL (LORAOPS_DB_URL)", url or "in $LORAOPS_HOME")
    owned = connect(opts)                                  # first: it sets what Ray reads when imported
    import ray
    from ray import serve

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        deploy(opts)
        c = opts.cluster
        log.info("serving on http://%s:%d: %d engine replicas, %d ingress", opts.host, opts.port, c.replicas,
                 c.ingress_replicas)
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            serve.delete(APP)
            if owned:
                serve.shutdown()
        finally:
            if owned:
                ray.shutdown()
