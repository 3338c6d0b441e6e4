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
