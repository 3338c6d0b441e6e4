"""Starting, waiting on and stopping the student application on a Ray cluster."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from dsbs import storage
from dsbs.cluster import ensure_ray, start_serve
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
    url = start_serve(cfg.host, cfg.port)
    log.info("starting the student (%s, backend %s) in Ray Serve", model, cfg.backend)
    serve.run(student_app(cfg, model), name=APP_NAME, route_prefix="/")
    log.info("student ready: %s/v1/predict (docs at %s/docs)", url, url)
    return url


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
    url = start_serve(cfg.host, cfg.port)
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
