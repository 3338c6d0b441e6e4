"""Starting, waiting on and stopping the student application on a Ray cluster."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from dsbs import storage
from dsbs.cluster import ensure_ray
from dsbs.config import ServeConfig
from dsbs.rundir import current_student

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSummary:
    """What a `dsbs serve` session did."""

    url: str
    model: str
    seconds: float

    def line(self) -> str:
        """The one-line summary printed at the end."""
        return f"served {self.model} at {self.url} for {self.seconds:.0f} s; stopped"


def start_student(cfg: ServeConfig, run_dir: str, ray_address: str | None = None) -> str:
    """Deploys the student app (ingress + autoscaled predictors); returns its base URL.

    The export is `cfg.model`, else this run directory's current `train/<hash>/student/`.
    Returns once every initial replica has loaded the student and warmed up.

    Raises:
        FileNotFoundError: when no model is given and the run has no finished training.
    """
    from ray import serve

    from dsbs.serve.app import APP_NAME, student_app

    # Absolute: replicas do not run in this process's working directory.
    model = storage.absolute(cfg.model or current_student(run_dir))
    ensure_ray(ray_address)
    url = start_serve(cfg)
    log.info("starting the student (%s, backend %s) in Ray Serve", model, cfg.backend)
    serve.run(student_app(cfg, model), name=APP_NAME, route_prefix="/")
    log.info("student ready: %s/v1/predict (docs at %s/docs)", url, url)
    return url


def start_serve(cfg: ServeConfig) -> str:
    """Starts Ray Serve's HTTP proxy at `serve.host:serve.port`; returns the proxy's base URL.

    The proxy's address is fixed when Serve first starts on a cluster (by an earlier stage, a
    RayService, another job): then the running one is kept, and its URL is returned.
    """
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    # Serve has no public getter for the running proxy's address; the controller client's
    # `http_config` is it (ray is pinned below 2.70).
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Ray Serve did not start")
    http = client.http_config
    if (http.host, http.port) != (cfg.host, cfg.port):
        log.warning(
            "Ray Serve already listens on %s:%s; serve.host/serve.port (%s:%s) do not apply",
            http.host,
            http.port,
            cfg.host,
            cfg.port,
        )
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host  # noqa: S104 - a bind-all address, compared
    return f"http://{host}:{http.port}"


def stop_student() -> None:
    """Deletes the student app (its replicas stop; Serve itself keeps running)."""
    from ray import serve

    from dsbs.serve.app import APP_NAME

    serve.delete(APP_NAME)


def serve_student(cfg: ServeConfig, run_dir: str, ray_address: str | None = None) -> ServeSummary:
    """Serves the student until interrupted (Ctrl-C or SIGTERM from `ray job stop`)."""
    started = time.monotonic()
    model = cfg.model or current_student(run_dir)
    # Ray installs a SIGTERM handler of its own in ray.init (it exits with status 15): join
    # the cluster first so that ours replaces it before the app starts.
    ensure_ray(ray_address)
    url = start_serve(cfg)
    serve_until_interrupted(lambda: start_student(cfg, run_dir, ray_address))
    return ServeSummary(url, model, time.monotonic() - started)


def serve_until_interrupted(start: Callable[[], object] | None = None) -> None:
    """Runs `start` (if given), then blocks while the student app serves.

    Ctrl-C or SIGTERM (`ray job stop`, Kubernetes) deletes the app, also during `start`.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if start is not None:
            start()
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        log.info("interrupted: stopping the student")
    finally:
        stop_student()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
