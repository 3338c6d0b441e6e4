"""Connecting to Ray: the cluster a job was submitted to, a given address, or a local one."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None) -> None:
    """Connects to Ray once per process.

    Inside `ray job submit` the job's driver joins its cluster (RAY_ADDRESS is set); with an
    explicit `address` it joins that one; otherwise it starts a local cluster.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, ignore_reinit_error=True, configure_logging=False, log_to_driver=True)
    log.info("ray: %s", ray.cluster_resources())


def serve_queue_bound(limit: int | None) -> int:
    """Serve's `max_queued_requests` for a config's value: None (no bound) is Serve's -1."""
    return -1 if limit is None else limit


def start_serve(host: str, port: int) -> str:
    """Starts Ray Serve on the joined cluster, its HTTP proxy at host:port; returns its base URL.

    Serve's HTTP address is fixed when Serve first starts on a cluster, and deploying an app
    starts Serve on Ray's defaults when nothing did. So every dsbs stage (generate, serve and
    the pipeline) starts Serve here, at the `serve` section's host and port, before it deploys.
    Where Serve already runs (a RayService, another job) it is kept as it is, and Ray logs which
    HTTP settings differ and are ignored.
    """
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    # A bind-all address is reached on the loopback (compared here, not bound).
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    return f"http://{reach}:{port}"


def joins_existing_cluster(address: str | None = None) -> bool:
    """Whether `ensure_ray` would join a running cluster (a job's, or a given address)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def in_submitted_job() -> bool:
    """Whether this process is the driver of a `ray job submit` job (Ray sets its job config)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_run_dir(run_dir: str, shared_filesystem: bool, address: str | None = None) -> None:
    """Refuses a run directory that the cluster's nodes cannot all see.

    On more than one node a local path is a different folder on every pod: generate's read
    tasks, the tokenizer, Ray Train's checkpoints, the export and Serve's replicas would each
    look at their own disk and fail far from the cause, or lose the run. A cluster this process
    starts itself is one node, so only a cluster it joins is checked.

    Raises:
        ConfigError: when the cluster has several nodes and `run_dir` is neither s3:// nor
            declared shared (`pipeline.shared_filesystem`), or when a submitted job's run_dir
            is relative (it would resolve into the job's temporary working directory).
    """
    from dsbs.config import ConfigError
    from dsbs.storage import is_s3

    if is_s3(run_dir):
        return
    if in_submitted_job() and not os.path.isabs(os.path.expanduser(run_dir)):
        raise ConfigError(
            f"pipeline.run_dir={run_dir!r} is relative, and under `ray job submit` it would "
            "land in the job's temporary working directory (a rerun would not find it): set "
            "pipeline.run_dir=s3://BUCKET/PREFIX or an absolute path"
        )
    if shared_filesystem or not joins_existing_cluster(address):
        return
    import ray

    ensure_ray(address)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1:
        raise ConfigError(
            f"pipeline.run_dir={run_dir!r} is a local path, but this Ray cluster has "
            f"{len(nodes)} nodes, each with its own disk: set pipeline.run_dir=s3://BUCKET/PREFIX, "
            "or pipeline.shared_filesystem=true if that path is one filesystem on every node "
            "(a PVC, NFS)"
        )
