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
