"""Generation against a teacher too slow for the configured load (issue: congestion collapse).

The teacher is `slow_teacher.SlowEngine` in the real `TeacherServer` deployment on a real
local Ray, driven by the real generate stage (Ray Data, caller actor, retries). The engine is
a stand-in slowed on purpose - decoding steps of 10 ms + 20 ms per running request, 30
tokens per answer - so that 24 requests in flight take 15 s each, past an 8 s timeout, on
any machine. Before the fix every attempt timed out at the caller while the engine went on
working on it, retries piled on, and rows ended as teacher errors.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path

import pytest
import ray.cloudpickle
import slow_teacher
from ports import free_port

from dsbs import storage
from dsbs.config import load_config
from dsbs.data.synth import synth
from dsbs.generate import generate_rationales
from dsbs.generate.stage import config_hash
from dsbs.records import read_records

pytestmark = pytest.mark.slow

ROWS = 48
TIGHT_TIMEOUT_S = 8.0
"""24 in flight take ~15 s; 9 take ~6 s: the right load answers within it."""
AMPLE_TIMEOUT_S = 300.0


def _run(tmp_path: Path, name: str, timeout_s: float):
    source = tmp_path / "in.jsonl"
    if not source.exists():
        synth("arithmetic", ROWS, 3, str(source))
    cfg = load_config(
        None,
        [
            f"data.source={source}",
            f"pipeline.run_dir={tmp_path / name}",
            "teacher.max_tokens=30",
            "teacher.num_cpus=0.5",
            f"teacher.request_timeout_s={timeout_s}",
            "teacher.max_retries=2",
            "generate.max_in_flight=24",
            "generate.shard_rows=16",
            f"serve.port={free_port()}",  # not Serve's default 8000
        ],
    )
    log = str(tmp_path / f"{name}-engine.log")
    loader = functools.partial(slow_teacher.make_engine, log=log, step_s=0.01, per_request_s=0.02)
    summary = generate_rationales(
        cfg.data,
        cfg.teacher,
        cfg.generate,
        cfg.pipeline.run_dir,
        teacher_loader=loader,
        serve_http=cfg.serve,
    )
    out = storage.join(
        cfg.pipeline.run_dir, "generate", config_hash(cfg.data, cfg.teacher, cfg.generate)
    )
    stats = json.loads(Path(out, "stats.json").read_text())
    inputs = [r.id for r in read_records(storage.join(out, "inputs"))]
    data = [r.id for r in read_records(storage.join(out, "data"))]
    quarantine = [
        json.loads(line)
        for f in storage.list_files(storage.join(out, "quarantine"))
        for line in Path(f).read_text().splitlines()
    ]
    assert sorted(data + [q["id"] for q in quarantine]) == sorted(inputs)  # each row once
    assert not quarantine, quarantine[:3]  # in particular no teacher errors
    return summary, stats, slow_teacher.engine_counts(log)


def test_a_teacher_too_slow_for_the_load_makes_the_stage_slow_never_wasteful(
    ray_cluster, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="dsbs")
    # The engine's code travels to the replica by value: tests/ is not on the workers' path.
    ray.cloudpickle.register_pickle_by_value(slow_teacher)
    ample, ample_stats, ample_engine = _run(tmp_path, "ample", AMPLE_TIMEOUT_S)
    tight, tight_stats, tight_engine = _run(tmp_path, "tight", TIGHT_TIMEOUT_S)

    assert ample.written == tight.written == ROWS
    assert ample_engine["start"] == ROWS
    assert tight_engine["start"] <= 1.1 * ROWS, tight_engine  # no pile of retried work
    ample_s = ample_stats["this_run"]["streaming_s"]
    tight_s = tight_stats["this_run"]["streaming_s"]
    assert tight_s <= 1.3 * ample_s, (tight_s, ample_s)
    # The tight run found the lower load on its own.
    assert tight.in_flight < 24
    # The replica's dtype choice, made on its node, reaches the driver's log with its reason.
    assert re.search(r"teacher: \S+ in (bfloat16|float32) \(auto: the CPU has", caplog.text)
