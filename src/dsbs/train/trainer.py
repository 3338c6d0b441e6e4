"""Stage 2: training the student with Ray Train (TorchTrainer) and DeepSpeed ZeRO.

    records (this run's generate output, or train.data)
      -> [driver] split parquet shards, written once, streaming (data.py); a tokenizer
         (reused, or trained on a bounded sample of the training text)
      -> [Ray Train] N workers, each streaming its share of the shards through Ray Data,
         running the plain training core (loop.py) with Ray's checkpoints
      -> RUN/train/<hash>/{data, tokenizer, checkpoints, student, metrics.jsonl, metrics.json}

The output folder is named by a hash of what changes the trained student, so a rerun of the
same config resumes its own checkpoints (Ray Train restores the latest one it recorded) and
a finished run is not trained again. This module is the Ray shell; loop.py runs without Ray.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbs import storage
from dsbs.cluster import ensure_ray
from dsbs.config import StudentConfig, TrainConfig
from dsbs.errors import DsbsError
from dsbs.rundir import StageOutput, current_rationales, read_json, stage_hash
from dsbs.student.tokenizer import train_tokenizer
from dsbs.train.checkpoints import rank_checkpoint
from dsbs.train.data import (
    SplitManifest,
    pass_copies,
    read_shards,
    split_examples,
    tokenizer_texts,
    write_splits,
)
from dsbs.train.examples import Example
from dsbs.train.loop import LoopSpec, run_training

log = logging.getLogger(__name__)

READ_TASKS = 2
"""Concurrent read tasks for the training rows: a shard read (10,000 rows) takes a fraction
of a second, and two keep any number of workers fed while one starts."""

SCHEMA_VERSION = 3
"""Bumped when the training output changes shape, so old checkpoints are not resumed into
(3: the split shards' label column is `target_label`)."""


class TrainingError(DsbsError, ValueError):
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
    teacher_test_accuracy: float | None = None
    """The teacher's labels scored on the same test rows; None when they have none."""

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
            f"accuracy valid {fmt(self.valid_accuracy)}, test {fmt(self.test_accuracy)} "
            f"(teacher on the same test rows {fmt(self.teacher_test_accuracy)}); "
            f"{self.examples_per_s:.1f} examples/s; {self.wall_time_s:.1f} s -> {self.output}"
        )


def config_hash(train: TrainConfig, student: StudentConfig, task: str, source: str) -> str:
    """A short hash of everything that changes the trained student.

    The sections' output keys (`OUTPUT_KEYS`: retries, the resume point and CPUs stay out, so a
    rerun with other values continues the same output), the task and the rows: the training
    and test files count by what they are now (storage.fingerprint), not only by their names,
    so a replaced `train.parquet` is trained on again.
    """
    return stage_hash(
        {"train": train, "student": student},
        {
            "version": SCHEMA_VERSION,
            "task": task,
            "source": source,
            "source_files": storage.fingerprint(source),
            "test_files": storage.fingerprint(train.test_data) if train.test_data else None,
        },
    )


def _tokenizer(
    student: StudentConfig, manifest: SplitManifest, out_dir: str, resume_from: str | None
) -> str:
    """Where the tokenizer lives: the given one, the pretrained model's, or one trained here."""
    if resume_from:
        return storage.join(resume_from, "tokenizer")  # the vocabulary the checkpoint learned
    if student.tokenizer or student.model:
        return student.tokenizer or student.model or ""
    target = storage.join(out_dir, "tokenizer")
    if storage.exists(storage.join(target, "tokenizer.json")):
        return target  # a rerun keeps the vocabulary its checkpoints were trained with
    texts = tokenizer_texts(manifest, student.tokenizer_sample_rows)
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
    output = StageOutput(storage.absolute(run_dir), "train", digest)
    out_dir = output.path
    if train.resume_from:
        train = train.model_copy(update={"resume_from": storage.absolute(train.resume_from)})
    local = {
        key: storage.absolute(value)
        for key in ("model", "tokenizer")
        if (value := getattr(student, key)) and Path(value).exists()  # not a hub id
    }
    student = student.model_copy(update=local)
    manifest = write_splits(train, source, storage.join(out_dir, "data"))
    rows, skipped = manifest.rows, manifest.skipped
    log.info("training rows %s from %s; skipped %s", rows, source, skipped or "none")
    finished = read_json(storage.join(out_dir, "metrics.json"))
    already_done = finished is not None
    if finished is None:
        per_step = train.num_workers * train.micro_batch_size
        if rows["train"] < per_step:
            raise TrainingError(
                f"{source}: {rows['train']} training rows for mode {train.mode} "
                f"(skipped: {skipped}); one step of {train.num_workers} workers x "
                f"micro_batch_size {train.micro_batch_size} needs {per_step}"
            )
        output.write_config({"train": train, "student": student}, {"task": task, "source": source})
        spec = LoopSpec(
            train=train,
            student=student,
            task=task,
            out_dir=out_dir,
            tokenizer_dir=_tokenizer(student, manifest, out_dir, train.resume_from),
            version=digest,
            rows={**rows, "skipped": skipped},
        )
        fit(spec, manifest, ray_dataset(manifest, train), ray_address)
        finished = read_json(storage.join(out_dir, "metrics.json"))
        if finished is None:
            raise TrainingError(f"{out_dir}: training ended without writing metrics.json")
    output.finish(complete=True, counts={**rows, "steps": finished["steps"]})
    wall = time.monotonic() - started
    return _summary(finished, out_dir, rows, skipped, wall, already_done)


def ray_dataset(manifest: SplitManifest, train: TrainConfig) -> Any:
    """The training rows as a Ray Data dataset that reads the shards as it streams.

    A pass holds the rows pass_copies times, read again in a shuffled block order (nothing is
    copied in memory), and workers shuffle further through a local buffer
    (train.shuffle_buffer_rows). One read operator serves every copy: an operator per copy
    would keep READ_TASKS worker processes each (a small dataset has tens of copies, and each
    process imports torch before it reads: over a minute before the first step on 2 CPUs).
    The read tasks ask for train.data_cpus: Ray Data's own parquet reader lists files in a
    task that asks for a whole CPU, which never runs where every CPU trains.
    """
    import ray.data

    files = manifest.files["train"] * pass_copies(manifest.rows["train"], train)
    listing = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    return listing.randomize_block_order(seed=train.seed).map_batches(
        read_shards,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=train.data_cpus,
        # Tasks that ask for no CPU are otherwise started all at once, a process each.
        compute=ray.data.TaskPoolStrategy(size=READ_TASKS),
    )


def fit(
    spec: LoopSpec, manifest: SplitManifest, dataset: Any, ray_address: str | None = None
) -> None:
    """Runs the training core on Ray Train workers, each streaming its split of `dataset`."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train = spec.train
    ensure_ray(ray_address)
    filesystem, path = storage.pyarrow_filesystem(spec.out_dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "manifest": manifest},
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
        datasets={"train": dataset},
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as err:
        raise failure_of(err, train.max_failures) from err


def failure_of(error: Any, max_failures: int) -> BaseException:
    """What a failed fit raises: a TrainingError naming a worker's dsbs error, or Ray's own.

    A dsbs error (a full disk at export, bad data) needs no traceback; anything else is a bug
    and keeps Ray's error, traceback and all.
    """
    known = [e for e in error.worker_failures.values() if isinstance(e, DsbsError)]
    if not known:
        return error
    restarts = f"after {max_failures} restarts" if max_failures else "with no restarts allowed"
    return TrainingError(f"training failed {restarts}: {known[0]}")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the training core with Ray's data and checkpoints."""
    import ray.train

    spec: LoopSpec = config["spec"]
    rank = ray.train.get_context().get_world_rank()
    data = _RayData(spec.train, config["manifest"])
    run_training(spec, data, _RayCheckpoints(spec.train.resume_from, rank))


class _RayData:
    """This worker's Ray Data shard of the training rows; the evaluation splits read whole."""

    def __init__(self, train: TrainConfig, manifest: SplitManifest) -> None:
        self.train, self.manifest = train, manifest

    def epoch(self, seed: int) -> Iterator[dict[str, Any]]:
        import ray.train

        fetch = self.train.micro_batch_size * self.train.length_grouping
        yield from ray.train.get_dataset_shard("train").iter_batches(
            batch_size=fetch,
            batch_format="numpy",
            local_shuffle_buffer_size=self.train.shuffle_buffer_rows,
            local_shuffle_seed=seed,
        )

    def examples(self, split: str) -> list[Example]:
        return split_examples(self.manifest, split)


class _RayCheckpoints:
    """Ray Train's checkpoints: the one it restores after a failure or rerun, else resume_from."""

    def __init__(self, resume_from: str | None, rank: int) -> None:
        self.resume_from, self.rank = resume_from, rank

    @contextmanager
    def latest(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self.resume_from:
            filesystem, path = storage.pyarrow_filesystem(self.resume_from)
            checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
        if checkpoint is None:
            yield None
            return
        log.info("resuming from %s", checkpoint.path)
        # Not checkpoint.as_directory(): that downloads every rank's shards to every rank.
        with rank_checkpoint(checkpoint.filesystem, checkpoint.path, self.rank) as folder:
            yield folder

    def save(self, folder: str, step: int, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _summary(
    metrics: dict[str, Any],
    out_dir: str,
    rows: dict[str, int],
    skipped: dict[str, int],
    wall: float,
    already_done: bool,
) -> TrainSummary:
    train_row, valid_row, test_row = metrics["final_train"], metrics["final_valid"], metrics["test"]
    return TrainSummary(
        output=out_dir,
        rows=rows,
        skipped=skipped,
        steps=metrics["steps"],
        label_loss=train_row.get("label_loss"),
        rationale_loss=train_row.get("rationale_loss"),
        valid_accuracy=valid_row.get("label_accuracy"),
        test_accuracy=test_row.get("label_accuracy"),
        teacher_test_accuracy=test_row.get("teacher_accuracy"),
        examples_per_s=metrics["examples_per_s"],
        wall_time_s=wall,
        already_done=already_done,
    )
