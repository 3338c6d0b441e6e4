"""The training core: DeepSpeed, the multi-task step, evaluation, checkpoints and the export.

spec -> tokenizer + student (partitioned under ZeRO-3) -> deepspeed.initialize
  -> resume from the latest checkpoint the store holds
  -> for each micro-batch of this rank's data: multitask_loss, backward, step
     every eval_every steps: validation (loss per task, label accuracy)
     every checkpoint_every steps: DeepSpeed checkpoint -> the store
  -> test evaluation -> export (gathered module by module) -> metrics.json

Plain `torch.distributed`, no Ray: the process group, the data (`TrainData`) and the
checkpoint store (`checkpoints.CheckpointStore`) come from the caller. Ray Train's shell is in
trainer.py; a bare run (`torchrun`, one process on a GPU machine) passes
`data.ParquetShards` and `checkpoints.FolderCheckpoints`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from dsbs import storage
from dsbs.config import StudentConfig, TrainConfig
from dsbs.model_cache import fetch_folder
from dsbs.rundir import write_json
from dsbs.student.export import (
    RATIONALE_PREFIX,
    StudentInfo,
    gathered_shards,
    save_student,
)
from dsbs.student.model import build_student
from dsbs.student.tokenizer import load_tokenizer
from dsbs.train.checkpoints import STATE_FILE, CheckpointStore
from dsbs.train.deepspeed_setup import (
    apply_activation_checkpointing,
    build_optimizer,
    deepspeed_config,
    lr_lambda,
)
from dsbs.train.evaluate import Evaluator, all_reduce_sums, teacher_accuracy
from dsbs.train.examples import Collator, Example, length_grouped
from dsbs.train.flops import peak_tflops, token_rows, train_flops
from dsbs.train.loss import Losses, multitask_loss, to_device

log = logging.getLogger("dsbs.train")


@dataclass(frozen=True)
class LoopSpec:
    """Everything a rank needs; typed configs travel as they are (pydantic models pickle)."""

    train: TrainConfig
    student: StudentConfig
    task: str
    out_dir: str
    """RUN/train/<hash>: metrics and the export go here."""
    tokenizer_dir: str
    version: str
    rows: dict[str, Any] = field(default_factory=dict)
    """Rows per split and rows skipped by reason, recorded in metrics.json."""


class TrainData(Protocol):
    """This rank's training rows and the evaluation splits."""

    def epoch(self, seed: int) -> Iterator[Mapping[str, Sequence[str]]]:
        """One pass of this rank's training rows in shuffled, fetched column batches.

        Every rank must get the same number of rows, so that all run the same steps.
        """
        ...

    def examples(self, split: str) -> list[Example]:
        """Every row of "valid" or "test", in the same order on every rank."""
        ...


def init_process_group(use_gpu: bool) -> None:
    """Joins the process group from torchrun's environment, when nobody did (Ray Train does).

    A lone process with no torchrun environment becomes rank 0 of a world of one.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed reads it to pick the device
    if use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_gpu else "gloo")


def leave_process_group() -> None:
    """Leaves the process group together with the other ranks: a bare run's last call.

    Ranks finish at different times (rank 0 alone writes the export and the metrics). A rank
    that tore its gloo group down and exited while rank 0 was still at work died, about once
    in 50 two-rank runs, in gloo's teardown (SIGABRT: "terminate called without an active
    exception"); waiting for every rank first keeps the group whole until all are done.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()


def run_training(spec: LoopSpec, data: TrainData, checkpoints: CheckpointStore) -> None:
    """Trains, evaluates and exports on this rank (see the module docstring).

    Every rank of an initialised process group calls it with the same spec.
    """
    import torch.distributed as dist

    train, student = spec.train, spec.student
    if not train.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"  # read by deepspeed at import
    _configure_logging()
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer, model, engine = _build_engine(spec)
    state = _restore(engine, train, checkpoints)
    rationale = train.mode == "distill_step_by_step"
    collator = Collator(tokenizer, student.max_input_length, student.max_target_length, rationale)
    # Its own collator, so that evaluation's truncations do not count as training's.
    eval_collator = Collator(
        tokenizer, student.max_input_length, student.max_target_length, rationale
    )
    evaluator = Evaluator(engine, tokenizer, eval_collator, train, student, spec.task, rank, world)
    valid = data.examples("valid")[: train.eval_max_rows]
    rows_per_step = train.micro_batch_size * train.grad_accum_steps * world
    peak = peak_tflops(torch.cuda.get_device_name()) if train.use_gpu else None
    if rank == 0:
        log.info("training from step %d to %d on %d ranks", state.step, train.max_steps, world)
    rng = random.Random(train.seed * 1_000_003 + state.step)  # noqa: S311 - data order
    step_loss = StepLoss()
    clock = (time.perf_counter(), state.step)  # this run's start, for the time left
    while state.step < train.max_steps:
        started = time.perf_counter()
        for batch in _micro_batches(data, train, rng):
            engine.train()
            lr = engine.get_lr()[0]  # the rate this step uses; engine.step() advances it
            tensors = collator(batch)
            state.flops += train_flops(model.config, token_rows(tensors))  # this rank's
            losses = multitask_loss(engine, to_device(tensors, engine.device), train.alpha)
            engine.backward(losses.total)
            engine.step()  # an optimizer step only every grad_accum_steps micro-batches
            step_loss.add(losses)
            if engine.global_steps == state.step:
                continue
            state.step = engine.global_steps
            state.train_seconds += time.perf_counter() - started
            state.record(
                state.step, step_loss.reduce(engine.device), lr, rows_per_step, collator, peak
            )
            if rank == 0 and (state.step % max(1, train.max_steps // 20) == 0):
                _log_step(state, train.max_steps, clock)
            if valid and (state.step % train.eval_every == 0 or state.step == train.max_steps):
                state.history.append(evaluator.run(valid, state.step, "valid"))
                if rank == 0:
                    log.info("step %d validation: %s", state.step, _describe(state.history[-1]))
            if state.step % train.checkpoint_every == 0 or state.step == train.max_steps:
                _checkpoint(engine, tokenizer, state, spec, rank, checkpoints)
            if state.step >= train.max_steps:
                break
            started = time.perf_counter()
    tests = data.examples("test")
    test = evaluator.run(tests, state.step, "test")
    # The teacher scored on the same rows, so the report compares like with like.
    test["teacher_accuracy"] = teacher_accuracy(tests, spec.task)
    _export(engine, tokenizer, train, student, spec, state, rank)
    if rank == 0:
        _write_metrics(spec, state, test)
    # ZeRO-3 keeps hooks, parameter handles and its process groups on the engine: release them
    # here, while the interpreter is whole, rather than in the process's teardown.
    engine.destroy()


def _build_engine(spec: LoopSpec) -> tuple[Any, Any, Any]:
    """The tokenizer, the student and the DeepSpeed engine that trains it (optimizer inside)."""
    import deepspeed  # after run_training set DS_ACCELERATOR

    train = spec.train
    torch.manual_seed(train.seed)  # same initial weights on every rank (ZeRO-3 partitions them)
    tokenizer = load_tokenizer(fetch_folder(spec.tokenizer_dir))
    ds_config = deepspeed_config(train)
    # Under ZeRO-3 each rank builds only its partition of the model (zero.Init).
    model = build_student(spec.student, len(tokenizer), ds_config=ds_config)
    apply_activation_checkpointing(model, train)
    optimizer = build_optimizer(train, [p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return tokenizer, model, engine


def _micro_batches(
    data: TrainData, train: TrainConfig, rng: random.Random
) -> Iterator[dict[str, list[str]]]:
    """One pass of this rank's rows as micro-batches grouped by length.

    Fetching `length_grouping` micro-batches at once amortises the data source's per-batch
    cost (tens of milliseconds in Ray Data, as much as a tiny model's step) and gives the
    grouping rows to sort. Every rank holds the same number of rows, so all run the same
    number of steps.
    """
    for batch in data.epoch(rng.randrange(2**31)):
        yield from length_grouped(
            batch, train.micro_batch_size, rng, sort=train.length_grouping > 1
        )


def _configure_logging() -> None:
    # Ray's worker may already log through the root logger; add a handler only when none does.
    if not logging.getLogger().handlers and not logging.getLogger("dsbs").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("dsbs").addHandler(handler)
    logging.getLogger("dsbs").setLevel(logging.INFO)


def time_left(seconds: float, steps_done: int, steps_left: int) -> str:
    """The time `steps_left` more steps take at this run's pace (evaluations included).

    A slow CPU can make the demo's training take several times what it takes elsewhere; the
    log says how long is left, so that a slow run does not look like a stuck one.
    """
    left = round(seconds / max(steps_done, 1) * max(steps_left, 0))
    minutes, secs = divmod(left, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _log_step(state: _State, max_steps: int, clock: tuple[float, int]) -> None:
    """Logs the step's metrics and the time left; `clock` is (when, step) this run began."""
    left = time_left(time.perf_counter() - clock[0], state.step - clock[1], max_steps - state.step)
    log.info("step %d/%d (%s left): %s", state.step, max_steps, left, _describe(state.history[-1]))


def _describe(row: dict[str, Any]) -> str:
    """A metrics row as one short log line."""
    parts = [f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)]
    return ", ".join(parts)


@dataclass
class _State:
    """What survives a restart: the optimizer step, time spent, and the metric rows so far."""

    step: int = 0
    train_seconds: float = 0.0
    rows: int = 0
    flops: float = 0.0
    """Model FLOPs of this worker's training steps (src/dsbs/train/flops.py)."""
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self,
        step: int,
        losses: dict[str, float],
        lr: float,
        rows: int,
        collator: Collator,
        peak: float | None,
    ) -> None:
        self.rows += rows
        tflops = self.flops / max(self.train_seconds, 1e-9) / 1e12  # per worker (per GPU)
        row: dict[str, Any] = {
            "split": "train",
            "step": step,
            **losses,
            "lr": lr,
            "examples_per_s": self.rows / max(self.train_seconds, 1e-9),
            "model_tflops_per_s": tflops,
            "train_seconds": self.train_seconds,
            "truncated": dict(collator.truncated),
        }
        if peak:
            row["mfu"] = tflops / peak
        self.history.append(row)


def _restore(engine: Any, train: TrainConfig, checkpoints: CheckpointStore) -> _State:
    """Loads the latest checkpoint the store holds (after a failure, a rerun or resume_from)."""
    with checkpoints.latest() as folder:
        if folder is None:
            return _State()
        load_path, _ = engine.load_checkpoint(folder)
        if load_path is None:
            raise RuntimeError(f"{folder}: not a DeepSpeed checkpoint")
        with open(os.path.join(folder, STATE_FILE)) as f:
            state = _State(**json.load(f))
    # The restored rate is the old schedule's; a resumed run with a longer max_steps follows
    # its own schedule from the restored step on.
    scheduler = engine.lr_scheduler
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * lr_lambda(train)(scheduler.last_epoch)
    state.history.append(
        {
            "split": "resume",
            "step": state.step,
            "optimizer_steps": _optimizer_steps(engine),
            "checkpoint": state.step,
        }
    )
    log.info("resumed at step %d", state.step)
    return state


def _optimizer_steps(engine: Any) -> int:
    """Steps the optimizer's own state has taken (AdamW's per-parameter counter), or 0."""
    # The optimizer dsbs handed DeepSpeed, whatever ZeRO or bf16 wrapper steps it: its state
    # holds the counters.
    for param_state in engine.basic_optimizer.state.values():
        if "step" in param_state:
            return int(param_state["step"])
    return 0


def _checkpoint(
    engine: Any,
    tokenizer: Any,
    state: _State,
    spec: LoopSpec,
    rank: int,
    checkpoints: CheckpointStore,
) -> None:
    """DeepSpeed checkpoint of this rank's shards, handed to the store."""
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=f"step{state.step}")
        if rank == 0:
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(asdict(state), f)
            # The vocabulary travels with the weights, so `resume_from` needs nothing else.
            tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
            _write_history(spec, state)
        metrics = {k: v for k, v in state.history[-1].items() if isinstance(v, float)}
        checkpoints.save(folder, state.step, {"step": float(state.step), **metrics})


class StepLoss:
    """One optimizer step's losses: the mean over its micro-batches and over all ranks.

    Kept on the device, so adding a micro-batch does not wait for the GPU; `reduce` syncs once
    per step.
    """

    def __init__(self) -> None:
        # total, label, rationale, micro-batches, micro-batches with a rationale
        self.sums: torch.Tensor | None = None

    def add(self, losses: Losses) -> None:
        """Counts one micro-batch's losses."""
        total, label = losses.total.detach().double(), losses.label_loss.detach().double()
        zero = torch.zeros_like(total)
        rationale = losses.rationale_loss
        parts = [total, label, zero if rationale is None else rationale.detach().double()]
        parts += [torch.ones_like(total), zero if rationale is None else torch.ones_like(total)]
        row = torch.stack(parts)
        self.sums = row if self.sums is None else self.sums + row

    def reduce(self, device: Any) -> dict[str, float]:
        """The step's mean losses over micro-batches and ranks; starts the next step's sums.

        A collective: every rank calls it at every step.
        """
        if self.sums is None:
            raise RuntimeError("no micro-batch was added before reduce()")
        total, label, rationale, batches, with_rationale = all_reduce_sums(
            self.sums.tolist(), device
        )
        self.sums = None
        out = {"loss": total / batches, "label_loss": label / batches}
        if with_rationale:
            out["rationale_loss"] = rationale / with_rationale
        return out


def _export(
    engine: Any,
    tokenizer: Any,
    train: TrainConfig,
    student: StudentConfig,
    spec: LoopSpec,
    state: _State,
    rank: int,
) -> None:
    """One Hugging Face folder in the export dtype, in size-capped shards, written by rank 0.

    Every rank takes part (ZeRO-3 gathers each module from all of them); rank 0 alone writes.
    """
    info = StudentInfo(
        task=spec.task,
        mode=train.mode,
        preset="pretrained" if student.model else student.preset,
        max_input_length=student.max_input_length,
        max_target_length=student.max_target_length,
        steps=state.step,
        version=spec.version,
        rationale_prefix=RATIONALE_PREFIX if train.mode == "distill_step_by_step" else "",
    )
    dtype = export_dtype(train)
    shards = gathered_shards(
        engine.module, dtype, int(train.export_shard_gb * 2**30), receive=rank == 0
    )
    if rank != 0:
        for _ in shards:  # the collective gathers, without keeping anything
            pass
        return
    out = storage.join(spec.out_dir, "student")
    save_student(engine.module, tokenizer, info, out, shards=shards, dtype=dtype)


def export_dtype(train: TrainConfig) -> torch.dtype:
    """The dtype the student is exported in: the training dtype unless train.export_dtype says."""
    name = train.export_dtype
    if name == "auto":
        name = "bfloat16" if train.precision == "bf16" else "float32"
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _write_history(spec: LoopSpec, state: _State) -> None:
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in state.history)
    storage.write_bytes(storage.join(spec.out_dir, "metrics.jsonl"), text.encode())


def _write_metrics(spec: LoopSpec, state: _State, test: dict[str, Any]) -> None:
    """Final metrics.json (written last: its presence marks a finished training run)."""
    train_rows = [r for r in state.history if r["split"] == "train"]
    valid_rows = [r for r in state.history if r["split"] == "valid"]
    summary = {
        "steps": state.step,
        "train_seconds": state.train_seconds,
        "examples_per_s": train_rows[-1]["examples_per_s"] if train_rows else 0.0,
        "final_train": train_rows[-1] if train_rows else {},
        "final_valid": valid_rows[-1] if valid_rows else {},
        "test": test,
        "rows": spec.rows,
        "version": spec.version,
    }
    _write_history(spec, state)
    write_json(storage.join(spec.out_dir, "metrics.json"), summary)
