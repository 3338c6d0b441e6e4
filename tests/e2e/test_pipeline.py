"""The whole pipeline as users run it: `ray job submit` to a running head, then `dsbs run` again.

Real everything: a Ray head started with `ray start`, the job server, the embedded teacher in
vLLM's CPU build behind Ray Serve, Ray Train + DeepSpeed, the student app over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from commands import BIN, TINY_CONFIG, run_command
from ports import free_port

pytestmark = pytest.mark.slow


def _check_run_dir(run: Path) -> dict:
    for stage in ("generate", "train"):  # one manifest schema for every stage's output
        pointer = json.loads((run / stage / "manifest.json").read_text())
        output = json.loads((run / stage / pointer["config_hash"] / "manifest.json").read_text())
        assert output["stage"] == stage and output["config_hash"] == pointer["config_hash"]
        assert output["complete"] is True and output["counts"]
    generate = json.loads((run / "generate" / "manifest.json").read_text())
    gen_dir = run / "generate" / generate["config_hash"]
    assert (gen_dir / "stats.json").is_file()
    assert list((gen_dir / "data").glob("*.parquet"))
    train = json.loads((run / "train" / "manifest.json").read_text())
    train_dir = run / "train" / train["config_hash"]
    for name in ("metrics.json", "metrics.jsonl", "config.json", "student/dsbs_student.json"):
        assert (train_dir / name).is_file(), name
    assert (train_dir / "student" / "model.safetensors").is_file()
    assert any((train_dir / "checkpoints").iterdir())
    report = run / "report"
    for name in ("metrics.json", "loss.png", "accuracy.png", "index.html"):
        assert (report / name).is_file(), name
    assert (report / "loss.png").read_bytes()[:4] == b"\x89PNG"
    page = (report / "index.html").read_text()
    assert '<img src="loss.png"' in page and "distill_step_by_step" in page  # the config
    metrics = json.loads((report / "metrics.json").read_text())
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
    return metrics


def test_pipeline_by_ray_job_submit_then_rerun_by_dsbs_run_skips_done_stages(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    data, run = tmp_path / "synth.jsonl", tmp_path / "run"
    synth_args = ["data", "synth", "--task", "arithmetic", "--n", "32", "--seed", "3"]
    synth = run_command([str(BIN / "dsbs"), *synth_args, "--out", str(data)], env, 60)
    assert synth.returncode == 0, synth.stderr
    overrides = [f"pipeline.run_dir={run}", f"data.source={data}", f"serve.port={free_port()}"]

    dashboard = free_port()
    head_args = ["start", "--head", "--num-cpus", "2", "--port", str(free_port())]
    head_args += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
    head_args += ["--include-dashboard", "true", "--disable-usage-stats"]
    head = run_command([str(BIN / "ray"), *head_args], env, 120)
    assert head.returncode == 0, head.stderr
    try:
        job = ["job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir"]
        job += [".", "--", sys.executable, "ray_jobs/distill_pipeline.py", "--config", TINY_CONFIG]
        submitted = run_command([str(BIN / "ray"), *job, *overrides], env, 1200)
    finally:
        run_command([str(BIN / "ray"), "stop", "--force"], env, 120)
    output = submitted.stderr + submitted.stdout  # the job's own log streams to stdout
    assert re.search(r"Job 'raysubmit_\w+' succeeded", output), output[-6000:]
    assert "run: student test accuracy" in output, output[-6000:]
    first = _check_run_dir(run)
    trained = next((run / "train").glob("*/metrics.json")).stat().st_mtime_ns

    # A rerun with the console script on the same run directory: nothing to generate or
    # train again (no teacher starts), the student is served and asked again, report rewritten.
    rerun = run_command([str(BIN / "dsbs"), "run", "--config", TINY_CONFIG, *overrides], env, 600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert rerun.stdout.startswith("run: student test accuracy"), rerun.stdout
    second = _check_run_dir(run)
    stats = json.loads(next((run / "generate").glob("*/stats.json")).read_text())
    assert stats["this_run"]["teacher_calls"] == 0
    assert stats["this_run"]["skipped_already_done"] == 32
    assert next((run / "train").glob("*/metrics.json")).stat().st_mtime_ns == trained
    assert second["student"]["test_accuracy"] == first["student"]["test_accuracy"]
    assert second["smoke_test"] == first["smoke_test"]
    assert second["stage_seconds"]["generate"] < first["stage_seconds"]["generate"]
