"""A real local Ray cluster for the integration tier, started once per module."""

from collections.abc import Iterator

import pytest
from local_ray import local_ray
from ports import free_port


@pytest.fixture(scope="module")
def ray_cluster(s3_server: str) -> Iterator[None]:
    """A local Ray with 2 CPUs, shut down after the module.

    It starts after the test S3 server so that its workers inherit the S3 environment, as
    every pod of a KubeRay cluster gets the same AWS variables from its Secret.
    """
    with local_ray(2):
        yield


@pytest.fixture(scope="module")
def serve_port(ray_cluster: None) -> Iterator[int]:
    """Ray Serve started on a free port for this module; shut down after it."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
