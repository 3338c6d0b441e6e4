"""Scoring a student, in training (`Evaluator`) and from an export (`evaluate_export`).

Both score a prediction against the same reference (`reference_label`) by the task's metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from typing import Any

import torch

from dsbs.config import StudentConfig, TrainConfig, default_of
from dsbs.records import Record, read_records
from dsbs.student.decode import generate_texts
from dsbs.student.export import LABEL_PREFIX, load_student
from dsbs.tasks import accuracy, get_task
from dsbs.train.examples import IGNORE_INDEX, Collator, Example
from dsbs.train.loss import to_device

log = logging.getLogger(__name__)


def reference_label(gold: str | None, teacher: str | None) -> str:
    """What a prediction is scored against: the gold label, or the teacher's where none exists.

    Empty when the row has neither (such a row is not scored).
    """
    return gold or teacher or ""


def teacher_accuracy(examples: Sequence[Example], task: str) -> float | None:
    """How often the teacher's label matched gold on `examples`, by the task's metric.

    A row the teacher gave no label for counts as wrong, as a student's empty answer would.
    None when no row has both a gold label and any teacher label (nothing to compare).
    """
    scored = [e for e in examples if e.gold]
    if not scored or not any(e.teacher for e in scored):
        return None
    return accuracy(get_task(task), [(e.teacher or None, e.gold) for e in scored])


def padded_slice(examples: Sequence[Example], rank: int, world: int) -> tuple[list[Example], int]:
    """This rank's share of `examples`, padded to the same length on every rank.

    Under ZeRO-3 every forward pass is collective, so every rank must run the same number of
    batches; pad rows repeat the first example and are not counted.

    Returns:
        The rows and how many of them are real.
    """
    if not examples:
        return [], 0
    mine = list(examples[rank::world])
    per_rank = math.ceil(len(examples) / world) if examples else 0
    real = len(mine)
    return mine + [examples[0]] * (per_rank - real), real


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class EvalSummary:
    """The outcome of `dsbs evaluate`."""

    model: str
    data: str
    task: str
    rows: int
    skipped: int
    accuracy: float

    def line(self) -> str:
        """One line for the end of the command."""
        return (
            f"evaluated {self.model} on {self.rows} rows of {self.data} ({self.task}): "
            f"label accuracy {self.accuracy:.4f}; {self.skipped} rows without a label skipped"
        )


def evaluate_export(
    model: str,
    data: str,
    batch_size: int = default_of(TrainConfig, "eval_batch_size"),
    cache_dir: str | None = None,
) -> EvalSummary:
    """Scores an exported student on records: its `predict:` output against the gold label.

    Rows without a gold label are scored against the teacher's label; rows with neither are
    skipped and counted.
    """
    student, tokenizer, info = load_student(model, cache_dir)
    task = get_task(info.task)
    records: list[Record] = read_records(data)
    scored = [r for r in records if reference_label(r.label, r.teacher_label)]
    correct = 0
    for batch in chunks(scored, batch_size):
        predictions = generate_texts(
            student,
            tokenizer,
            [info.label_prefix + r.input for r in batch],
            info.max_input_length,
            info.max_target_length,
        )
        correct += sum(
            task.is_correct(p, reference_label(r.label, r.teacher_label))
            for p, r in zip(predictions, batch, strict=True)
        )
    return EvalSummary(
        model=model,
        data=data,
        task=info.task,
        rows=len(scored),
        skipped=len(records) - len(scored),
        accuracy=correct / len(scored) if scored else 0.0,
    )


def all_reduce_sums(values: list[float], device: Any) -> list[float]:
    """Sums `values` over all ranks, on `device`.

    That is the engine's device: NCCL (the GPU process group) refuses CPU tensors, which gloo
    (the CPU one) takes, so a CPU tensor here passes every CPU test and kills every GPU run.
    """
    import torch.distributed as dist

    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return [float(v) for v in totals.cpu()]


class Evaluator:
    """Validation and test: loss per task (token-weighted) and label accuracy, across ranks."""

    def __init__(
        self,
        engine: Any,
        tokenizer: Any,
        collator: Collator,
        train: TrainConfig,
        student: StudentConfig,
        task: str,
        rank: int,
        world: int,
    ) -> None:
        self.engine, self.tokenizer, self.collator = engine, tokenizer, collator
        self.train, self.student, self.task = train, student, get_task(task)
        self.rank, self.world = rank, world

    @torch.no_grad()
    def run(self, examples: list[Example], step: int, split: str) -> dict[str, Any]:
        """Metrics of one pass over `examples` (every rank calls this with the same list)."""
        self.engine.eval()
        rows, real = padded_slice(examples, self.rank, self.world)
        sums = EvalSums()
        for offset, batch in zip(
            range(0, len(rows), self.train.eval_batch_size),
            chunks(rows, self.train.eval_batch_size),
            strict=True,
        ):
            n_real = max(0, min(len(batch), real - offset))
            tensors = to_device(
                self.collator(
                    {
                        k: [getattr(e, k) for e in batch]
                        for k in ("input", "target_label", "rationale")
                    }
                ),
                self.engine.device,
            )
            for target in ("label", "rationale"):
                if target not in tensors:
                    continue
                part = tensors[target]
                # Pad rows count for nothing; nor, in the rationale loss, rows without a
                # rationale (a test set scored on gold labels has none).
                counted = [
                    i < n_real and (target == "label" or bool(e.rationale))
                    for i, e in enumerate(batch)
                ]
                part["labels"][~torch.tensor(counted, device=part["labels"].device)] = IGNORE_INDEX
                tokens = int((part["labels"] != IGNORE_INDEX).sum())
                # Every rank runs every forward pass, counted or not: under ZeRO-3 each one is
                # a collective.
                loss = self.engine(**part).loss
                if tokens:
                    sums.add_loss(target, float(loss), tokens)
            predictions = generate_texts(
                self.engine.module,
                self.tokenizer,
                [LABEL_PREFIX + e.input for e in batch],
                self.student.max_input_length,
                self.student.max_target_length,
                synced_gpus=self.train.zero_stage == 3 and self.world > 1,
            )
            pairs = zip(predictions[:n_real], batch[:n_real], strict=True)
            sums.correct += sum(
                self.task.is_correct(p, reference_label(e.gold, e.teacher)) for p, e in pairs
            )
            sums.scored += n_real
        return sums.reduced(self.engine.device).metrics(split, step)


@dataclass
class EvalSums:
    """One evaluation pass's sums on this rank; `reduced` adds them up over all ranks."""

    label_loss: float = 0.0
    """Label loss times its tokens, summed over batches."""
    label_tokens: float = 0.0
    rationale_loss: float = 0.0
    """Rationale loss times its tokens, summed over batches."""
    rationale_tokens: float = 0.0
    correct: float = 0.0
    """Rows whose predicted label matched the reference."""
    scored: float = 0.0

    def add_loss(self, target: str, mean_loss: float, tokens: int) -> None:
        """Counts one batch's mean loss on `target` ("label" or "rationale") over `tokens`."""
        if target == "label":
            self.label_loss += mean_loss * tokens
            self.label_tokens += tokens
        else:
            self.rationale_loss += mean_loss * tokens
            self.rationale_tokens += tokens

    def reduced(self, device: Any) -> EvalSums:
        """The sums over all ranks (a collective: every rank calls it)."""
        return EvalSums(*all_reduce_sums(list(astuple(self)), device))

    def metrics(self, split: str, step: int) -> dict[str, Any]:
        """Token-weighted losses and label accuracy, leaving out a metric with nothing to count."""
        metrics: dict[str, Any] = {"split": split, "step": step, "rows": int(self.scored)}
        if self.label_tokens:
            metrics["label_loss"] = self.label_loss / self.label_tokens
        if self.rationale_tokens:
            metrics["rationale_loss"] = self.rationale_loss / self.rationale_tokens
        if self.scored:
            metrics["label_accuracy"] = self.correct / self.scored
        return metrics
