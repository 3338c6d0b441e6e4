"""A real local Ray for one test module (tests/ is on sys.path via its conftest)."""

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A new local Ray with `num_cpus` logical CPUs; Serve and Ray shut down after.

    `address="local"` starts a new cluster even where an earlier `ray start` left its address
    behind (a plain `ray.init()` would join that one).
    """
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        # A deployment handle used from this process (the generate stage asks the teacher
        # replica for its dtype) keeps threads that would start Ray again after shutdown.
        serve.shutdown()
        ray.shutdown()
        assert_no_ray_poller()


def assert_no_ray_poller() -> None:
    """Fails where Ray Data's usage poller runs in this process (tests/conftest.py: why)."""
    import threading

    names = {thread.name for thread in threading.enumerate()}
    assert "data-usage-metrics-poller" not in names, "RAY_USAGE_STATS_ENABLED=0 was not in force"
