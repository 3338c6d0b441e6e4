"""The project's CPU image as a 2-node Ray cluster of containers, driven as users drive KubeRay.

Real: the image built from docker/Dockerfile with podman (on a stand-in for rayproject/ray made
from Debian's packages, since no registry can be reached here), a Ray head container and a Ray
worker container (each its own filesystem; host network on loopback, distinct Ray ports),
the moto S3 server, `ray job submit` from this machine the
way users submit through a port-forward. The head runs no work (`num-cpus 0`, as in k8s/), and
the config is mounted read-only at /etc/dsbs, as the ConfigMap is. What cannot run here is the
KubeRay operator that would create these pods.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port, ray_node_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IMAGE = "localhost/dsbs:cpu-test"
CONFIG = REPO / "tests" / "assets" / "configs"
AUTH: dict[str, str] = {}
"""The cluster's token settings, for the containers and `ray job submit` only."""


def _can_install_tools() -> bool:
    return (
        shutil.which("podman") is not None
        or os.geteuid() == 0
        or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    )


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """podman with the project's configuration (scripts/containers.sh)."""
    out = subprocess.run(
        ["bash", "scripts/containers.sh", "podman", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}: {out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def image() -> str:
    if sys.platform != "linux" or not _can_install_tools():
        pytest.skip("needs Linux and root (or sudo) to install podman")
    started = time.monotonic()
    out = subprocess.run(
        ["bash", "scripts/containers.sh", "image"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "IMAGE": IMAGE},
    )
    assert out.returncode == 0, out.stderr[-5000:]
    print(f"image ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return IMAGE


def _ray_ports() -> list[str]:
    # An object store that fits the containers' /dev/shm (Ray falls back to disk otherwise).
    return [*ray_node_ports(), "--object-store-memory=800000000"]


@pytest.fixture(scope="module")
def cluster(image: str, s3_server: str) -> Iterator[str]:
    """A head and a worker container; yields the job server's address."""
    tag = uuid.uuid4().hex[:8]
    gcs, dashboard = free_port(), free_port()
    # Token authentication as KubeRay's authOptions sets it up: one token, in every pod's
    # environment and in the submitter's - never in this process's, where Ray caches what it
    # reads and the next module's local Ray would start with this token.
    AUTH["RAY_AUTH_MODE"], AUTH["RAY_AUTH_TOKEN"] = "token", uuid.uuid4().hex + uuid.uuid4().hex
    env = []
    for key in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    ):
        env += ["-e", f"{key}={os.environ[key]}"]
    env += [arg for key, value in AUTH.items() for arg in ("-e", f"{key}={value}")]
    common = ["run", "-d", "--network=host", "--shm-size=2g", *env]
    head = f"dsbs-head-{tag}"
    worker = f"dsbs-worker-{tag}"
    podman(
        *common,
        "--name",
        head,
        "-v",
        f"{CONFIG}:/etc/dsbs:ro",
        image,
        "ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--num-cpus=0",
        "--num-gpus=0",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        f"--ray-client-server-port={free_port()}",
        "--disable-usage-stats",
        *_ray_ports(),
    )
    try:
        address = f"http://127.0.0.1:{dashboard}"
        _wait_for_nodes(address, 1, head)
        podman(
            *common,
            "--name",
            worker,
            "-v",
            f"{CONFIG}:/etc/dsbs:ro",
            image,
            "ray",
            "start",
            f"--address=127.0.0.1:{gcs}",
            "--block",
            "--node-ip-address=127.0.0.2",
            "--num-cpus=3",
            "--disable-usage-stats",
            *_ray_ports(),
        )
        _wait_for_nodes(address, 2, worker)
        yield address
    finally:
        for name in (worker, head):
            logs = podman("logs", "--tail", "40", name, check=False)
            print(f"--- {name}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}", file=sys.stderr)
            podman("rm", "-f", "-t", "5", name, check=False)
        AUTH.clear()


def _wait_for_nodes(address: str, count: int, container: str) -> None:
    deadline = time.monotonic() + 180
    script = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
    while time.monotonic() < deadline:
        out = podman("exec", container, "python", "-c", script, check=False, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        if "state improper" in out.stderr:
            break  # its `ray start` exited: the last lines of its log say why
        time.sleep(2)
    log = podman("logs", "--tail", "3", container, check=False)
    raise AssertionError(
        f"{count} Ray nodes not up at {address}: {out.stderr[-1000:]}\n"
        f"{container} log ends: {(log.stdout + log.stderr)[-1500:]}"
    )


def _submit(address: str, *args: str, timeout: float) -> str:
    out = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--",
            "python",
            "ray_jobs/distill_pipeline.py",
            "--config",
            "/etc/dsbs/pipeline-tiny.yaml",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **AUTH, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    return out.stdout + out.stderr


def test_pipeline_job_on_a_two_node_cluster_of_containers_writes_its_report_to_s3(
    cluster, s3_bucket
):
    from dsbs import storage

    data = f"{s3_bucket}/inputs/synth.jsonl"
    synth = subprocess.run(
        [
            str(BIN / "dsbs"),
            "data",
            "synth",
            "--task",
            "arithmetic",
            "--n",
            "32",
            "--seed",
            "3",
            "--out",
            data,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synth.returncode == 0, synth.stderr

    # A local run directory is refused up front: on two nodes it is two different folders.
    refused = _submit(cluster, "pipeline.run_dir=/tmp/dsbs-run", f"data.source={data}", timeout=300)
    assert re.search(r"Job 'raysubmit_\w+' failed", refused), refused[-4000:]
    assert "is a local path, but this Ray cluster has 2 nodes" in refused, refused[-4000:]
    assert "pipeline.run_dir=s3://" in refused

    run = f"{s3_bucket}/runs/tiny"
    output = _submit(
        cluster,
        f"pipeline.run_dir={run}",
        f"data.source={data}",
        f"serve.port={free_port()}",
        timeout=1800,
    )
    assert re.search(r"Job 'raysubmit_\w+' succeeded", output), output[-6000:]
    assert "run: student test accuracy" in output, output[-6000:]

    metrics = json.loads(storage.read_bytes(f"{run}/report/metrics.json"))
    assert metrics["teacher"]["rows_in"] == 32
    assert metrics["student"]["steps"] == 20 and metrics["student"]["test_accuracy"] is not None
    assert len(metrics["smoke_test"]) == 3
    names = storage.list_files(f"{run}/report")
    assert {f"{run}/report/{n}" for n in ("index.html", "loss.png")} <= set(names)
    students = [n for n in storage.list_files(f"{run}/train") if n.endswith("model.safetensors")]
    assert students, "no exported student in S3"
