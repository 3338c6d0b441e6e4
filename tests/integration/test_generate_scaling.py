"""The generate stage offers the load at which Serve runs every teacher replica (issue 15,
item 1): real vLLM (CPU build, the embedded model) in Ray Serve on a local Ray of 3 logical
CPUs, `teacher.max_replicas=2` with 1 CPU each, and no `generate.max_in_flight`. A thread
watches Serve's status while the stage runs. Before, one caller kept at most
`generate.max_in_flight` (64) requests in flight whatever the replica range, so Serve never
ran more than 64 / target_ongoing_requests replicas.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from local_ray import local_ray
from ports import free_port

from dsbs import storage
from dsbs.config import load_config
from dsbs.data.synth import synth
from dsbs.generate import generate_rationales

pytestmark = pytest.mark.slow

ROWS = 32


@pytest.fixture(scope="module")
def three_cpus() -> Iterator[None]:
    """A local Ray with room for two 1-CPU teacher replicas and the stage's light tasks."""
    with local_ray(3):
        yield


def _watch_replicas(seen: dict[str, int], stop: threading.Event) -> None:
    """Records the most teacher replicas Serve had, started or starting, while the stage runs."""
    from ray import serve

    from dsbs.generate.deployment import APP_NAME, DEPLOYMENT_NAME

    while not stop.is_set():
        app = serve.status().applications.get(APP_NAME)
        if app is not None and DEPLOYMENT_NAME in app.deployments:
            states = {str(k): v for k, v in app.deployments[DEPLOYMENT_NAME].replica_states.items()}
            running = sum(v for k, v in states.items() if k.endswith("RUNNING"))
            seen["running"] = max(seen["running"], running)
            seen["asked"] = max(seen["asked"], sum(states.values()))
        time.sleep(0.5)


def test_the_serve_controller_scales_the_teacher_to_max_replicas_during_a_run(
    three_cpus, tmp_path, caplog
):
    source = tmp_path / "in.jsonl"
    synth("arithmetic", ROWS, 5, str(source))
    cfg = load_config(
        None,
        [
            f"data.source={source}",
            f"pipeline.run_dir={tmp_path / 'run'}",
            "teacher.max_tokens=32",
            "teacher.num_cpus=1",
            "teacher.min_replicas=1",
            "teacher.max_replicas=2",
            "teacher.target_ongoing_requests=4",
            "teacher.upscale_delay_s=1",
            "generate.shard_rows=16",
            f"serve.port={free_port()}",  # not Serve's default 8000
        ],
    )
    assert cfg.generate.max_in_flight is None  # the stage sizes the load from the teacher's
    seen, stop = {"running": 0, "asked": 0}, threading.Event()
    watcher = threading.Thread(target=_watch_replicas, args=(seen, stop), daemon=True)
    watcher.start()
    try:
        with caplog.at_level("INFO", logger="dsbs.generate.stage"):
            summary = generate_rationales(
                cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir, serve_http=cfg.serve
            )
    finally:
        stop.set()
        watcher.join(10)
    # What 2 replicas accept (2 x max_ongoing_requests 256), one caller per 256.
    assert "up to 512 requests in flight through 2 caller(s)" in caplog.text
    assert not [r for r in caplog.records if "keeps too few requests" in r.getMessage()]
    # The controller scaled to max_replicas, never past it. Whether the second replica also
    # answers before the last row depends on its start-up (a vLLM engine loading on the two
    # cores the first one is busy on: over 100 s here), so it is not asked for.
    assert seen["asked"] == 2 and seen["running"] >= 1, seen
    assert summary.teacher_calls == ROWS
    assert sum(1 for _ in storage.list_files(summary.output)) > 0
