"""Shared fixtures: paths to test assets and the paper data, and a real S3-compatible server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

# A driver with Ray's usage stats on (one that joins a `ray start` cluster, as test_generate's
# does) starts Ray Data's usage-metrics poller, a thread that outlives ray.shutdown(). This
# process hosts one test cluster after another, and a thread left from an earlier one once
# ended the whole run as a later cluster shut down ("The core worker has already been
# shutdown ... The process will exit"); the poller is the thread its id pointed to. The
# images turn usage stats off as well (docker/).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
# ../shared is the project's steering folder; users don't have it, so tests that need it skip.
PAPER_ROOT = REPO.parent / "shared" / "data" / "paper"


@pytest.fixture(scope="session")
def paper_root() -> Path:
    """The paper's datasets (../shared/data/paper); skips when absent."""
    if not (PAPER_ROOT / "svamp").is_dir():
        pytest.skip(f"paper data not found at {PAPER_ROOT} (only in the project's workspace)")
    return PAPER_ROOT


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A t5-tiny export trained for a few hundred steps on both tasks (about 20 s, once)."""
    from students import make_tiny_student

    return make_tiny_student(tmp_path_factory.mktemp("tiny") / "student")


@pytest.fixture(scope="session")
def assets() -> Path:
    """tests/assets."""
    return ASSETS


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto in server mode, its own process) on 127.0.0.1.

    The environment points boto3 and pyarrow at it the way users point them at MinIO:
    AWS_ENDPOINT_URL plus credentials, nothing in config files.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # pragma: allowlist secret - the S3 test server's
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
    )
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=10)


_S3_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the test S3 server; returns `s3://NAME`."""
    from dsbs import storage

    name = "dsbs-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"
