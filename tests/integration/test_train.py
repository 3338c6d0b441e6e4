"""Training on a real local Ray with real DeepSpeed on CPU: 2 workers, a tiny T5 from config.

Covers: ZeRO-2 and ZeRO-3 (the latter with the run directory on the test S3 server), the
logged loss arithmetic, the export and `dsbs evaluate`, resuming a stopped run from its
checkpoint with its optimizer state, and a training worker killed mid-run.
"""

import json
import threading
import time

import pytest
from chaos_record import record
from students import tiny_training_overrides

from dsbs import cli, storage
from dsbs.config import load_config
from dsbs.data.synth import synth
from dsbs.rundir import current_student
from dsbs.train.deepspeed_setup import lr_lambda
from dsbs.train.trainer import train_student

pytestmark = pytest.mark.slow

ALPHA = 0.3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("data") / "synth.jsonl")
    synth("arithmetic", 300, 0, path, rationales=True)
    return path


def _config(data: str, run_dir: str, *extra: str):
    return load_config(None, _overrides(data, run_dir, *extra))


def _overrides(data: str, run_dir: str, *extra: str) -> list[str]:
    return tiny_training_overrides(
        data,
        run_dir,
        f"train.alpha={ALPHA}",
        "train.lr=3e-3",
        "train.max_steps=24",
        "train.test_fraction=0.05",
        *extra,
    )


def _history(out_dir: str) -> list[dict]:
    text = storage.read_bytes(storage.join(out_dir, "metrics.jsonl")).decode()
    return [json.loads(line) for line in text.splitlines()]


def _train(cfg):
    return train_student(cfg.train, cfg.student, cfg.data.task, cfg.pipeline.run_dir)


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, data, tmp_path_factory):
    cfg = _config(data, str(tmp_path_factory.mktemp("zero2")), "train.zero_stage=2")
    return cfg, _train(cfg)


def _check_training(out_dir: str, steps: int) -> list[dict]:
    history = _history(out_dir)
    train_rows = [r for r in history if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    for row in train_rows:  # the logged total is the weighted sum of the two task losses
        expected = ALPHA * row["label_loss"] + (1 - ALPHA) * row["rationale_loss"]
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
    first = sum(r["loss"] for r in train_rows[:4]) / 4
    last = sum(r["loss"] for r in train_rows[-4:]) / 4
    assert last < 0.7 * first, (first, last)
    valid = [r for r in history if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [12, 24]
    assert valid[-1]["rationale_loss"] < valid[0]["rationale_loss"]
    metrics = json.loads(storage.read_bytes(storage.join(out_dir, "metrics.json")))
    assert metrics["steps"] == steps and metrics["examples_per_s"] > 0
    assert metrics["final_train"]["model_tflops_per_s"] > 0
    assert "mfu" not in metrics["final_train"]  # no GPU peak to divide by on CPU
    assert metrics["rows"]["train"] > 0 and metrics["rows"]["skipped"] == {}
    assert metrics["test"]["rows"] > 0 and "label_accuracy" in metrics["test"]
    return history


def test_zero2_two_workers_learn_and_log_the_weighted_loss(zero2_run, capsys):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    cfg, summary = zero2_run
    _check_training(summary.output, 24)
    student = storage.join(summary.output, "student")
    model = AutoModelForSeq2SeqLM.from_pretrained(student)
    tokenizer = AutoTokenizer.from_pretrained(student)
    out = model.generate(
        **tokenizer(["predict: Ava has 3 apples."], return_tensors="pt"), max_new_tokens=8
    )
    assert out.shape[0] == 1
    assert cli.main(["evaluate", "--model", student, "--data", cfg.train.data]) == 0
    assert "label accuracy" in capsys.readouterr().out
    # a finished run is not trained again
    again = _train(cfg)
    assert again.already_done and again.steps == 24


def test_zero3_on_s3_storage_exports_one_consolidated_model(ray_cluster, data, s3_bucket, capsys):
    cfg = _config(data, f"{s3_bucket}/run", "train.zero_stage=3")
    overrides = _overrides(data, f"{s3_bucket}/run", "train.zero_stage=3")
    assert cli.main(["train", *overrides]) == 0  # the command line, as `dsbs train` runs it
    assert "train: " in capsys.readouterr().out
    student = current_student(cfg.pipeline.run_dir)
    output = student.rsplit("/", 1)[0]
    _check_training(output, 24)
    files = {f.rsplit("/", 1)[-1] for f in storage.list_files(student)}
    assert {"model.safetensors", "config.json", "tokenizer.json", "dsbs_student.json"} <= files
    checkpoints = [
        f for f in storage.list_files(storage.join(output, "checkpoints")) if "zero_pp_rank_1" in f
    ]
    assert checkpoints, "rank 1's ZeRO-3 shards are in the checkpoint"
    assert cli.main(["evaluate", "--model", student, "--data", cfg.train.data]) == 0
    assert "label accuracy" in capsys.readouterr().out


def test_a_stopped_run_resumes_at_its_step_with_its_optimizer_state(zero2_run, data, tmp_path):
    _, summary = zero2_run
    states = storage.list_files(storage.join(summary.output, "checkpoints"))
    latest = sorted(f.rsplit("/", 1)[0] for f in states if f.endswith("dsbs_state.json"))[-1]
    resumed_cfg = _config(
        data,
        str(tmp_path / "resumed"),
        "train.zero_stage=2",
        "train.max_steps=30",
        f"train.resume_from={latest}",
    )
    resumed = _train(resumed_cfg)
    history = _history(resumed.output)
    resume = next(r for r in history if r["split"] == "resume")
    assert resume["step"] == 24 and resume["optimizer_steps"] == 24
    train_rows = [r for r in history if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 31))  # earlier history kept
    # the schedule continues where it stopped: step 25 uses the factor of step 24
    factor = lr_lambda(resumed_cfg.train)
    assert train_rows[24]["lr"] == pytest.approx(resumed_cfg.train.lr * factor(24))


def _training_worker_pids() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))
    ]


@pytest.mark.chaos
def test_a_killed_training_worker_resumes_from_the_latest_checkpoint(ray_cluster, data, tmp_path):
    import psutil

    cfg = _config(
        data,
        str(tmp_path / "run"),
        "train.zero_stage=2",
        "train.max_steps=36",
        "train.max_failures=2",
        "train.micro_batch_size=4",
        "train.grad_accum_steps=2",  # steps count optimizer steps, not micro-batches
    )
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            # Ray Train's own record of registered checkpoints, written once one is complete
            snapshots = list(
                tmp_path.glob("run/train/*/checkpoints/checkpoint_manager_snapshot.json")
            )
            pids = _training_worker_pids()
            if snapshots and pids:
                psutil.Process(pids[-1]).kill()
                killed.append(pids[-1])
            time.sleep(0.5)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    summary = _train(cfg)
    killer.join(timeout=5)
    assert killed, "no training worker was killed"
    history = _history(summary.output)
    resume = [r for r in history if r["split"] == "resume"]
    assert resume and resume[0]["step"] >= 12, resume
    assert [r["step"] for r in history if r["split"] == "train"] == list(range(1, 37))
    assert summary.steps == 36
    steps = [r["step"] for r in history if r["split"] == "train"]
    record(
        scenario="training: a worker killed mid-run",
        injected=f"SIGKILL of a Ray Train worker after the first checkpoint (pid {killed[0]})",
        sent=36,
        answered=summary.steps,
        errors=0,
        lost=len(set(range(1, 37)) - set(steps)),
        detail=f"resumed at step {resume[0]['step']} from its checkpoint; steps 1..36 all logged",
    )


def test_sweep_trains_every_mode_at_every_fraction_and_plots_them(
    ray_cluster, data, tmp_path, monkeypatch
):
    from dsbs.pipeline import sweep_pipeline

    # A relative run directory, as in configs/local-demo.yaml: Ray Train runs its workers in a
    # folder of its own, so the stage must hand them absolute paths.
    monkeypatch.chdir(tmp_path)
    cfg = _config(
        data,
        "runs/sweep",
        "train.num_workers=1",
        "train.max_steps=4",
        "train.eval_every=4",
        "train.checkpoint_every=4",
        "sweep.fractions=[1.0, 0.5]",
        "sweep.modes=[standard_finetune, distill_step_by_step]",
    )
    summary = sweep_pipeline(cfg)
    assert [(r["mode"], r["fraction"]) for r in summary.rows] == [
        ("standard_finetune", 0.5),
        ("standard_finetune", 1.0),
        ("distill_step_by_step", 0.5),
        ("distill_step_by_step", 1.0),
    ]
    half, full = summary.rows[0]["train_rows"], summary.rows[1]["train_rows"]
    assert 0.35 * full < half < 0.65 * full
    assert all(r["test_accuracy"] is not None and r["steps"] == 4 for r in summary.rows)
    report = tmp_path / "runs" / "sweep" / "report" / "sweep"
    assert (report / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((report / "metrics.json").read_text())["sweep"]) == 4
    assert summary.line().startswith("sweep: 4 trainings (1 seed); test accuracy at 100.0% ")
    assert all(r["seed"] == 0 and r["test_rows"] > 0 for r in summary.rows)
    # Every training is its own config hash: a rerun finds them finished.
    started = time.monotonic()
    assert sweep_pipeline(cfg).rows == summary.rows
    assert time.monotonic() - started < 30
