"""The pipeline on a 2-node Ray cluster started with `ray start`, as a KubeRay cluster is shaped.

A head that runs no work (`--num-cpus 0`, as in k8s/) and a second node joined with
`ray start --address`, with its own HOME (so its own model cache), its own Ray session folder
(runtime environments, logs) and its own IP on loopback.
Real everything: the job server, the embedded teacher in vLLM's CPU build behind Ray Serve,
Ray Train + DeepSpeed, the student app over HTTP, the S3 server (moto). A local run directory
is refused with the setting to use; the whole pipeline submitted with `ray job submit` on an
S3 run directory completes, with the training workers and both apps' replicas placed on the
second node (read back from Ray's state API), and `dsbs run` again on that run directory
trains nothing and calls no teacher. The chaos scenarios here stop the training's driver and
its node. Both nodes share this machine's disk: the separate-filesystem half is
tests/integration/test_containers.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest
from chaos_record import record
from commands import BIN, REPO, TINY_CONFIG, run_command
from ports import free_port, ray_node_ports

from dsbs import storage

pytestmark = pytest.mark.slow

SECOND = "127.0.0.2"
"""The second node's IP (on loopback)."""
NODE_GONE_S = 20.0
"""Seconds the second node stays away."""


@pytest.fixture(scope="module")
def two_nodes(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A head (no CPUs) and a worker node (2 CPUs, its own HOME and Ray session folder)."""
    # One token for both nodes, the drivers and this process's state API calls, the way
    # KubeRay's authOptions gives every pod the same one (the second node has its own HOME,
    # so it cannot read the head's ~/.ray/auth_token).
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    with pytest.MonkeyPatch.context() as patch:  # the environment comes back whatever happens
        for key, value in token.items():
            patch.setenv(key, value)
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
        gcs, dashboard = free_port(), free_port()
        head = ["start", "--head", "--num-cpus=0", "--node-ip-address=127.0.0.1"]
        head += [f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
        head += ["--include-dashboard=true", f"--ray-client-server-port={free_port()}"]
        head += ["--disable-usage-stats", *ray_node_ports()]
        # Its own session folder, as a pod's own disk: sharing the head's, the second node's
        # runtime-env agent deleted a job's working_dir (the driver's cwd on the head) once
        # the last replica using it there had stopped. Short: Ray's sockets live under it.
        worker_tmp = tempfile.mkdtemp(prefix="dsbs-ray2-", dir="/tmp")
        try:
            started = run_command([str(BIN / "ray"), *head], env, 120)
            assert started.returncode == 0, started.stderr
            home = tmp_path_factory.mktemp("worker-home")

            def join() -> None:
                worker = ["start", f"--address=127.0.0.1:{gcs}", f"--node-ip-address={SECOND}"]
                worker += ["--num-cpus=2", "--disable-usage-stats", *ray_node_ports()]
                worker.append(f"--temp-dir={worker_tmp}")
                done = run_command([str(BIN / "ray"), *worker], {**env, "HOME": str(home)}, 120)
                assert done.returncode == 0, done.stderr

            join()
            _wait_for_nodes(f"http://127.0.0.1:{dashboard}", env, 2)
            yield {
                "gcs": f"127.0.0.1:{gcs}",
                "dashboard": f"http://127.0.0.1:{dashboard}",
                "env": env,
                "join": join,
            }
        finally:
            run_command([str(BIN / "ray"), "stop", "--force"], env, 120)
            shutil.rmtree(worker_tmp, ignore_errors=True)


# Ray's state API in a process of its own: this test process may have met Ray (and its
# auth settings) in an earlier module, and the cluster's token is in `env`.
_STATE = """
import json, sys
from ray.util.state import list_actors, list_nodes
address = sys.argv[1]
nodes = [
    {"id": n.node_id, "head": n.is_head_node, "alive": n.state == "ALIVE"}
    for n in list_nodes(address=address)
]
actors = [
    {"class": a.class_name, "node": a.node_id}
    for a in list_actors(address=address, limit=10_000, detail=True, raise_on_missing_output=False)
]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def _state(dashboard: str, env: dict[str, str]) -> dict:
    """The cluster's nodes and actors (dead ones included), from the state API."""
    done = run_command([sys.executable, "-c", _STATE, dashboard], env, 120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wait_for_nodes(dashboard: str, env: dict[str, str], count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = run_command([sys.executable, "-c", _STATE, dashboard], env, 120)
        if done.returncode == 0:  # the state API answers once the dashboard is up
            nodes = json.loads(done.stdout.strip().splitlines()[-1])["nodes"]
            if sum(n["alive"] for n in nodes) == count:
                return
        time.sleep(1)
    raise AssertionError(f"{count} Ray nodes not up")


def _check_run_dir(run: str) -> tuple[dict, dict[str, str]]:
    """Checks the run directory's contract (read through dsbs.storage).

    Returns:
        The report, and each stage's output folder by stage name.
    """

    def read_json(*parts: str) -> dict:
        return json.loads(storage.read_bytes(storage.join(run, *parts)))

    files = set(storage.list_files(run))
    folders: dict[str, str] = {}
    for stage in ("generate", "train"):  # one manifest schema for every stage's output
        pointer = read_json(stage, "manifest.json")
        output = read_json(stage, pointer["config_hash"], "manifest.json")
        assert output["stage"] == stage and output["config_hash"] == pointer["config_hash"]
        assert output["complete"] is True and output["counts"]
        folders[stage] = storage.join(run, stage, pointer["config_hash"])
    generated = folders["generate"]
    assert storage.join(generated, "stats.json") in files
    assert any(f.startswith(f"{generated}/data/") and f.endswith(".parquet") for f in files)
    trained = folders["train"]
    for name in ("metrics.json", "metrics.jsonl", "config.json", "student/dsbs_student.json"):
        assert storage.join(trained, name) in files, name
    assert storage.join(trained, "student", "model.safetensors") in files
    assert any(f.startswith(f"{trained}/checkpoints/") for f in files)
    for name in ("metrics.json", "loss.png", "accuracy.png", "index.html"):
        assert storage.join(run, "report", name) in files, name
    assert storage.read_bytes(storage.join(run, "report", "loss.png"))[:4] == b"\x89PNG"
    page = storage.read_bytes(storage.join(run, "report", "index.html")).decode()
    assert '<img src="loss.png"' in page and "distill_step_by_step" in page  # the config
    metrics = read_json("report", "metrics.json")
    teacher, student = metrics["teacher"], metrics["student"]
    assert 0 < teacher["kept_fraction"] <= 1 and teacher["rows_in"] == 32
    assert teacher["accuracy_against_gold"] is not None
    assert student["steps"] == 20 and student["examples_per_s"] > 0
    assert student["test_accuracy"] is not None and student["train_label_loss"] > 0
    # The teacher is scored on the student's own test rows (its labels are in every row here).
    assert student["teacher_test_accuracy"] is not None and student["test_rows"] > 0
    assert "Teacher and student on the same" in page
    assert student["train_rationale_loss"] > 0
    assert set(metrics["stage_seconds"]) == {"generate", "train", "evaluate", "serve"}
    answers = metrics["smoke_test"]
    assert len(answers) == 3 and all(isinstance(a["label"], str) for a in answers)
    assert all(a["gold"] and isinstance(a["correct"], bool) for a in answers)  # held-out rows
    return metrics, folders


def test_a_pipeline_job_runs_its_work_on_the_second_node_and_a_rerun_skips_done_stages(
    two_nodes, s3_bucket, tmp_path
):
    """What users do on KubeRay: `ray job submit` of the whole pipeline, then `dsbs run` again
    from outside the cluster (`pipeline.ray_address`) on the same S3 run directory."""
    env, address = two_nodes["env"], two_nodes["gcs"]
    data = tmp_path / "synth.jsonl"
    synth = ["data", "synth", "--task", "arithmetic", "--n", "32", "--seed", "3"]
    assert run_command([str(BIN / "dsbs"), *synth, "--out", str(data)], env, 60).returncode == 0
    overrides = [f"data.source={data}", f"serve.port={free_port()}"]
    dsbs_run = [str(BIN / "dsbs"), "run", "--config", TINY_CONFIG, *overrides]
    dsbs_run.append(f"pipeline.ray_address={address}")

    refused = run_command([*dsbs_run, f"pipeline.run_dir={tmp_path}"], env, 300)
    assert refused.returncode == 2  # a config error: the message says what to set
    assert "this Ray cluster has 2 nodes" in refused.stderr, refused.stderr[-3000:]
    assert "pipeline.run_dir=s3://" in refused.stderr

    run_dir = f"{s3_bucket}/two-nodes"
    job = ["job", "submit", "--address", two_nodes["dashboard"], "--working-dir", "."]
    job += ["--", sys.executable, "ray_jobs/distill_pipeline.py", "--config", TINY_CONFIG]
    submitted = run_command(
        [str(BIN / "ray"), *job, *overrides, f"pipeline.run_dir={run_dir}"], env, 1500
    )
    output = submitted.stderr + submitted.stdout  # the job's own log streams to stdout
    assert re.search(r"Job 'raysubmit_\w+' succeeded", output), output[-6000:]
    assert len(re.findall(r"^run: student test accuracy", output, re.M)) == 1, output[-6000:]
    first, folders = _check_run_dir(run_dir)
    trained = storage.join(folders["train"], "metrics.json")
    metrics_before = storage.read_bytes(trained)

    # Nothing to generate or train again (no teacher starts); the student is served and asked
    # again and the report rewritten. The replicas' logs reach the driver's stdout too.
    rerun = run_command([*dsbs_run, f"pipeline.run_dir={run_dir}"], env, 600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    summary = [line for line in rerun.stdout.splitlines() if line.startswith("run: student")]
    assert len(summary) == 1, rerun.stdout[-3000:]
    second, again = _check_run_dir(run_dir)
    assert again == folders
    stats = json.loads(storage.read_bytes(storage.join(folders["generate"], "stats.json")))
    assert stats["this_run"]["teacher_calls"] == 0
    assert stats["this_run"]["skipped_already_done"] == 32
    assert storage.read_bytes(trained) == metrics_before  # a new training's wall time differs
    assert second["student"]["test_accuracy"] == first["student"]["test_accuracy"]
    assert second["smoke_test"] == first["smoke_test"]
    assert second["stage_seconds"]["generate"] < first["stage_seconds"]["generate"]

    state = _state(two_nodes["dashboard"], env)
    second_node = next(n["id"] for n in state["nodes"] if not n["head"])
    placed: dict[str, set[str]] = {}
    for actor in state["actors"]:
        for kind in ("RayTrainWorker", "ServeReplica:dsbs-student", "ServeReplica:dsbs-teacher"):
            if actor["class"].startswith(kind):
                placed.setdefault(kind, set()).add(actor["node"])
    assert placed.get("RayTrainWorker") == {second_node}, placed
    assert placed.get("ServeReplica:dsbs-student") == {second_node}, placed
    assert placed.get("ServeReplica:dsbs-teacher") == {second_node}, placed


def _train_command(two_nodes: dict, data: str, run_dir: str) -> list[str]:
    """`dsbs train` of the tiny student on this cluster: 60 steps, a checkpoint every 10."""
    return [
        str(BIN / "dsbs"),
        *("train", "--config", TINY_CONFIG, f"pipeline.ray_address={two_nodes['gcs']}"),
        *(f"pipeline.run_dir={run_dir}", f"train.data={data}", "train.max_steps=60"),
        *("train.checkpoint_every=10", "train.eval_every=30", "train.max_failures=3"),
    ]


def _rationale_data(tmp_path) -> str:
    data = tmp_path / "labelled.jsonl"
    synth = ["data", "synth", "--task", "arithmetic", "--n", "160", "--seed", "4", "--rationales"]
    done = run_command([str(BIN / "dsbs"), *synth, "--out", str(data)], dict(os.environ), 60)
    assert done.returncode == 0, done.stderr
    return str(data)


def _first_checkpoint(run_dir: str, proc: subprocess.Popen, timeout_s: float = 600) -> float:
    """Waits until Ray Train has recorded a checkpoint of the run (its snapshot file)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if any(f.endswith("checkpoint_manager_snapshot.json") for f in storage.list_files(run_dir)):
            return time.monotonic() - started
        assert proc.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint within {timeout_s} s")


def _steps(run_dir: str) -> tuple[list[int], list[int]]:
    """(train steps logged, steps resumed at) of the one training run under `run_dir`."""
    [metrics] = [f for f in storage.list_files(run_dir) if f.endswith("/metrics.jsonl")]
    history = [json.loads(line) for line in storage.read_bytes(metrics).decode().splitlines()]
    return (
        [r["step"] for r in history if r["split"] == "train"],
        [r["step"] for r in history if r["split"] == "resume"],
    )


@pytest.mark.chaos
def test_a_training_driver_killed_and_resubmitted_resumes_from_its_checkpoint(
    two_nodes, s3_bucket, tmp_path
):
    env = two_nodes["env"]
    run_dir = f"{s3_bucket}/driver-killed"
    command = _train_command(two_nodes, _rationale_data(tmp_path), run_dir)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=log)
        _first_checkpoint(run_dir, first)
        first.send_signal(signal.SIGKILL)  # the driver: the job's actors go with it
        first.wait(timeout=60)
    again = run_command(command, env, 900)
    assert again.returncode == 0, again.stderr[-4000:]
    steps, resumed = _steps(run_dir)
    assert steps == list(range(1, 61)) and resumed and resumed[0] >= 10, (steps, resumed)
    record(
        "training: the driver killed, the job resubmitted",
        "SIGKILL of `dsbs train` after its first checkpoint, then the same command again",
        sent=60,
        answered=steps[-1],
        errors=0,
        lost=len(set(range(1, 61)) - set(steps)),
        detail=f"the resubmitted job resumed at step {resumed[0]} from the checkpoint on S3; "
        "steps 1..60 each logged once",
    )


def _node_processes(ip: str) -> list[psutil.Process]:
    """The Ray processes of the node started with `ip` (raylet and its agents)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ray" in cmdline and (
            f"--node_ip_address={ip}" in cmdline or f"--node-ip-address={ip}" in cmdline
        ):
            found.append(proc)
    return found


@pytest.mark.chaos
def test_training_survives_its_node_stopping_and_coming_back(two_nodes, s3_bucket, tmp_path):
    """Run last in this module: the second node is stopped (SIGKILL of its raylet and agents,
    as a preempted pod) after the first checkpoint, and a new one joins 20 s later."""
    env = two_nodes["env"]
    run_dir = f"{s3_bucket}/node-lost"
    command = _train_command(two_nodes, _rationale_data(tmp_path), run_dir)
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=log)
        _first_checkpoint(run_dir, proc)
        victims = _node_processes(SECOND)
        assert victims, "no process of the second node found"
        for victim in victims:
            victim.kill()
        stopped = time.monotonic()
        time.sleep(NODE_GONE_S)
        assert proc.poll() is None, "the job ended while its only worker node was gone"
        two_nodes["join"]()
        returned = time.monotonic()
        proc.wait(timeout=900)
    finished = time.monotonic()
    output = (tmp_path / "train.log").read_text()
    assert proc.returncode == 0, output[-4000:]
    steps, resumed = _steps(run_dir)
    assert steps == list(range(1, 61)) and resumed, (steps, resumed)
    record(
        "cluster: the training node stopped and back",
        f"SIGKILL of the second node's Ray processes after the first checkpoint; a node "
        f"joined again {NODE_GONE_S:.0f} s later",
        sent=60,
        answered=steps[-1],
        errors=0,
        lost=len(set(range(1, 61)) - set(steps)),
        detail=f"the job waited for the resources, resumed at step {resumed[0]} "
        f"{finished - returned:.0f} s after the node returned ({returned - stopped:.0f} s gone); "
        "steps 1..60 each logged once",
    )
