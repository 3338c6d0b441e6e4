"""Stage 2: training the student with Ray Train (TorchTrainer) and DeepSpeed ZeRO.

    records (this run's generate output, or train.data)
      -> [driver] examples per mode (rows lacking what it needs counted and skipped),
         hash splits, subsample, tokenizer (reused, or trained on the training text)
      -> [Ray Train] N workers, each streaming its shard of a Ray Data dataset   (loop.py)
      -> RUN/train/<hash>/{tokenizer, checkpoints, student, metrics.jsonl, metrics.json}

The output folder is named by a hash of what changes the trained student, so a rerun of the
same config resumes its own checkpoints (Ray Train restores the latest one it recorded) and
a finished run is not trained again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsbs import storage
from dsbs.cluster import ensure_ray
from dsbs.config import StudentConfig, TrainConfig
from dsbs.records import read_records
from dsbs.rundir import current_rationales, read_json, train_dir, train_root, write_json
from dsbs.student.export import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs.student.tokenizer import train_tokenizer
from dsbs.train.examples import Splits, select_examples, split_examples
from dsbs.train.loop import LoopSpec, train_loop_per_worker

log = logging.getLogger(__name__)

MIN_PASS_ROWS = 16_384
"""Rows per Ray Data pass below which the training rows are repeated (see epoch_rows)."""

SCHEMA_VERSION = 1
"""Bumped when the training output changes shape, so old checkpoints are not resumed into."""

# Settings that change how a run executes but not what it learns stay out of the hash, so a
# rerun with more retries or another resume point continues the same output.
_NOT_HASHED = {"max_failures", "resume_from", "cpus_per_worker", "eval_max_rows"}


class TrainingError(ValueError):
    """The training stage could not run: no usable rows, or too few for the batch size."""


@dataclass(frozen=True)
class TrainSummary:
    """What a training run did; `line()` is the one-line summary."""

    output: str
    rows: dict[str, int]
    skipped: dict[str, int]
    steps: int
    label_loss: float | None
    rationale_loss: float | None
    valid_accuracy: float | None
    test_accuracy: float | None
    examples_per_s: float
    wall_time_s: float
    already_done: bool = False

    def line(self) -> str:
        """The summary line printed at the end."""
        skipped = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        done = " (already trained; nothing to do)" if self.already_done else ""
        return (
            f"train{done}: {self.rows['train']} train / {self.rows['valid']} valid / "
            f"{self.rows['test']} test rows, skipped: {skipped}; {self.steps} steps; "
            f"label_loss {fmt(self.label_loss)}, rationale_loss {fmt(self.rationale_loss)}; "
            f"accuracy valid {fmt(self.valid_accuracy)}, test {fmt(self.test_accuracy)}; "
            f"{self.examples_per_s:.1f} examples/s; {self.wall_time_s:.1f} s -> {self.output}"
        )


def config_hash(train: TrainConfig, student: StudentConfig, task: str, source: str) -> str:
    """A short hash of everything that changes the trained student.

    The training and test files count by what they are now (storage.fingerprint), not only
    by their names: a replaced `train.parquet` is trained on again.
    """
    spec = {
        "version": SCHEMA_VERSION,
        "task": task,
        "source": source,
        "source_files": storage.fingerprint(source),
        "test_files": storage.fingerprint(train.test_data) if train.test_data else None,
        "train": train.model_dump(exclude=_NOT_HASHED),
        "student": student.model_dump(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def load_splits(train: TrainConfig, source: str) -> tuple[Splits, Counter[str]]:
    """Examples for the mode from `source`, split; skipped rows counted by reason."""
    examples, skipped = select_examples(read_records(source), train.mode, train.label_source)
    test = None
    if train.test_data:
        # The test set is scored against gold labels: every labeled row counts, whatever the mode.
        test_examples, _ = select_examples(
            read_records(train.test_data), "standard_finetune", "gold"
        )
        test = test_examples
    splits = split_examples(
        examples, train.valid_fraction, train.test_fraction, train.subsample, train.seed, test
    )
    return splits, skipped


def _tokenizer(
    student: StudentConfig, splits: Splits, out_dir: str, resume_from: str | None
) -> str:
    """Where the tokenizer lives: the given one, the pretrained model's, or one trained here."""
    if resume_from:
        return storage.join(resume_from, "tokenizer")  # the vocabulary the checkpoint learned
    if student.tokenizer or student.model:
        return student.tokenizer or student.model or ""
    target = storage.join(out_dir, "tokenizer")
    if storage.exists(storage.join(target, "tokenizer.json")):
        return target  # a rerun keeps the vocabulary its checkpoints were trained with
    texts = [LABEL_PREFIX + e.input for e in splits.train] + [
        RATIONALE_PREFIX + e.input for e in splits.train
    ]
    texts += [e.label for e in splits.train] + [e.rationale for e in splits.train if e.rationale]
    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(texts, student.vocab_size, tmp)
        for path in sorted(Path(tmp).iterdir()):
            storage.write_bytes(storage.join(target, path.name), path.read_bytes())
    return target


def train_student(
    train: TrainConfig,
    student: StudentConfig,
    task: str,
    run_dir: str,
    ray_address: str | None = None,
) -> TrainSummary:
    """Trains (or resumes, or skips when finished) the student into `run_dir/train/<hash>/`.

    Args:
        train: mode, loss weight, Ray Train scaling, DeepSpeed, schedule, evaluation, faults.
        student: architecture or pretrained weights, tokenizer, length limits.
        task: the task name (its metric scores labels).
        run_dir: the run directory (local or s3://).
        ray_address: a Ray cluster to join; None joins the job's cluster or starts one.

    Returns:
        The summary (the full metrics are in metrics.json).

    Raises:
        TrainingError: when no rows are usable or there are too few for one step per worker.
    """
    started = time.monotonic()
    source = train.data or current_rationales(run_dir)
    digest = config_hash(train, student, task, source)
    # Absolute from here on (the hash keeps the paths as given): workers run elsewhere.
    out_dir = storage.absolute(train_dir(run_dir, digest))
    if train.resume_from:
        train = train.model_copy(update={"resume_from": storage.absolute(train.resume_from)})
    local = {
        key: storage.absolute(value)
        for key in ("model", "tokenizer")
        if (value := getattr(student, key)) and Path(value).exists()  # not a hub id
    }
    student = student.model_copy(update=local)
    splits, skipped = load_splits(train, source)
    rows = {"train": len(splits.train), "valid": len(splits.valid), "test": len(splits.test)}
    log.info("training rows %s from %s; skipped %s", rows, source, dict(skipped) or "none")
    finished = read_json(storage.join(out_dir, "metrics.json"))
    already_done = finished is not None
    if finished is None:
        per_step = train.num_workers * train.micro_batch_size
        if len(splits.train) < per_step:
            raise TrainingError(
                f"{source}: {len(splits.train)} training rows for mode {train.mode} "
                f"(skipped: {dict(skipped)}); one step of {train.num_workers} workers x "
                f"micro_batch_size {train.micro_batch_size} needs {per_step}"
            )
        write_json(
            storage.join(out_dir, "config.json"),
            {
                "task": task,
                "source": source,
                "train": train.model_dump(),
                "student": student.model_dump(),
            },
        )
        counts = {**rows, "skipped": dict(skipped)}
        _fit(train, student, task, splits, counts, out_dir, digest, ray_address)
        finished = read_json(storage.join(out_dir, "metrics.json"))
        if finished is None:
            raise TrainingError(f"{out_dir}: training ended without writing metrics.json")
    write_json(storage.join(train_root(run_dir), "manifest.json"), {"config_hash": digest})
    wall = time.monotonic() - started
    return _summary(finished, out_dir, rows, skipped, wall, already_done)


def epoch_rows(splits: Splits, train: TrainConfig) -> list[dict[str, str]]:
    """The training rows for one pass of Ray Data: several epochs, each shuffled on its own.

    Every pass over a Ray Data dataset starts a new streaming execution, which costs about a
    second per worker: as much as a whole epoch of a small dataset (the paper's SVAMP has 800
    rows). Small datasets are therefore repeated, each copy shuffled with its own seed, to at
    least MIN_PASS_ROWS rows (never more epochs than the run needs).
    """
    rows = [asdict(e) for e in splits.train]
    per_step = train.num_workers * train.micro_batch_size * train.grad_accum_steps
    needed = math.ceil(train.max_steps * per_step / len(rows)) if rows else 1
    copies = max(1, min(needed, math.ceil(MIN_PASS_ROWS / max(1, len(rows)))))
    rng = random.Random(train.seed)  # noqa: S311 - data order, not security
    out: list[dict[str, str]] = []
    for _ in range(copies):
        rng.shuffle(rows)
        out.extend(rows)
    return out


def _fit(
    train: TrainConfig,
    student: StudentConfig,
    task: str,
    splits: Splits,
    counts: dict[str, Any],
    out_dir: str,
    digest: str,
    ray_address: str | None,
) -> None:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tokenizer_dir = _tokenizer(student, splits, out_dir, train.resume_from)
    ensure_ray(ray_address)
    spec = LoopSpec(
        train=train.model_dump(),
        student=student.model_dump(),
        task=task,
        out_dir=out_dir,
        tokenizer_dir=tokenizer_dir,
        version=digest,
        rows=counts,
        valid=[asdict(e) for e in splits.valid],
        test=[asdict(e) for e in splits.test],
    )
    filesystem, path = storage.pyarrow_filesystem(out_dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(spec),
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name="checkpoints",
            storage_path=path if filesystem is not None else os.path.abspath(path),
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": ray.data.from_items(epoch_rows(splits, train))},
    )
    trainer.fit()


def _summary(
    metrics: dict[str, Any],
    out_dir: str,
    rows: dict[str, int],
    skipped: Counter[str],
    wall: float,
    already_done: bool,
) -> TrainSummary:
    train_row, valid_row, test_row = metrics["final_train"], metrics["final_valid"], metrics["test"]
    return TrainSummary(
        output=out_dir,
        rows=rows,
        skipped=dict(skipped),
        steps=metrics["steps"],
        label_loss=train_row.get("label_loss"),
        rationale_loss=train_row.get("rationale_loss"),
        valid_accuracy=valid_row.get("label_accuracy"),
        test_accuracy=test_row.get("label_accuracy"),
        examples_per_s=metrics["examples_per_s"],
        wall_time_s=wall,
        already_done=already_done,
    )
