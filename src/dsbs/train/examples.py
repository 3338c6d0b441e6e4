"""Training examples from records: what each mode learns, the splits, and collation.

Pure: no Ray, no DeepSpeed. The collator turns a batch of examples into the two tasks'
tensors with dynamic padding and `-100` on padded label positions (ignored by the loss).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dsbs.records import Record
from dsbs.student.export import LABEL_PREFIX, RATIONALE_PREFIX

IGNORE_INDEX = -100
"""Label id the cross-entropy ignores (padding)."""


@dataclass(frozen=True)
class Example:
    """One training row: the input and the targets its mode learns."""

    id: str
    input: str
    target_label: str
    """The label the student learns: gold or the teacher's, by mode (`label_target`). Not
    `Record.label`, which is always gold (here `gold`)."""
    rationale: str
    """The rationale target; empty when the mode learns no rationale."""
    gold: str
    """The gold label for accuracy; empty when the row has none."""
    teacher: str = ""
    """The teacher's label, to score the teacher on the same rows; empty when it gave none."""


def label_target(record: Record, mode: str, label_source: str) -> str | None:
    """The label a mode learns from a record: gold, the teacher's, or None when it lacks it."""
    if mode == "standard_finetune" or (mode == "distill_step_by_step" and label_source == "gold"):
        return record.label
    return record.teacher_label


def to_example(record: Record, mode: str, label_source: str) -> Example | str:
    """The example a mode learns from `record`, or the reason it cannot learn from it.

    A row without the label its mode needs (or, for `distill_step_by_step`, without a
    rationale) is skipped and counted by that reason, never crashed on.
    """
    label = label_target(record, mode, label_source)
    rationale = record.rationale or ""
    if not record.input.strip():
        return "empty_input"
    if not label:
        gold = label_source == "gold" or mode == "standard_finetune"
        return "no_label" if gold else "no_teacher_label"
    if mode == "distill_step_by_step" and not rationale.strip():
        return "no_rationale"
    return Example(
        id=record.id,
        input=record.input,
        target_label=label,
        rationale=rationale if mode == "distill_step_by_step" else "",
        gold=record.label or "",
        teacher=record.teacher_label or "",
    )


def _unit(seed: int, salt: str, example_id: str) -> float:
    """A uniform number in [0, 1) from seed and id: stable across runs, orders and machines."""
    digest = hashlib.sha256(f"{seed}\x1f{salt}\x1f{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(
    example_id: str, valid_fraction: float, test_fraction: float, subsample: float, seed: int
) -> str | None:
    """The split an example belongs to by a hash of (seed, id); None when subsampled away."""
    u = _unit(seed, "split", example_id)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train" if _unit(seed, "subsample", example_id) < subsample else None


def _encode(
    tokenizer: Any, texts: Sequence[str], max_length: int, prefix: str = ""
) -> tuple[list[list[int]], int]:
    """Token ids ending in EOS, cut to `max_length` (keeping EOS); returns ids and cut count."""
    ids = tokenizer([prefix + t for t in texts])["input_ids"]
    eos = tokenizer.eos_token_id
    cut = 0
    for i, seq in enumerate(ids):
        if len(seq) > max_length:
            ids[i] = [*seq[: max_length - 1], eos]
            cut += 1
    return ids, cut


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


class Collator:
    """Tokenizes a batch for the label task and, when asked, the rationale task."""

    def __init__(
        self, tokenizer: Any, max_input_length: int, max_target_length: int, rationale: bool
    ) -> None:
        """Keeps the tokenizer and limits; `rationale` adds the `explain:` task."""
        self.tokenizer = tokenizer
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length
        self.rationale = rationale
        self.truncated: Counter[str] = Counter()
        """Inputs and targets cut to the maximum lengths so far, by kind."""

    def _task(
        self, inputs: Sequence[str], targets: Sequence[str], prefix: str, kind: str
    ) -> dict[str, torch.Tensor]:
        input_ids, cut_inputs = _encode(self.tokenizer, inputs, self.max_input_length, prefix)
        target_ids, cut_targets = _encode(self.tokenizer, targets, self.max_target_length)
        self.truncated["input"] += cut_inputs
        self.truncated[kind] += cut_targets
        input_tensor = _pad(input_ids, self.tokenizer.pad_token_id)  # [B, T_in]
        return {
            "input_ids": input_tensor,
            "attention_mask": (input_tensor != self.tokenizer.pad_token_id).long(),
            "labels": _pad(target_ids, IGNORE_INDEX),  # [B, T_target], -100 on padding
        }

    def __call__(self, batch: Mapping[str, Sequence[str]]) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors per task, "label" and "rationale", from a column batch of `Example` fields.

        The batch holds `input`, `target_label` and `rationale` columns.
        """
        inputs = [str(t) for t in batch["input"]]
        labels = [str(t) for t in batch["target_label"]]
        out = {"label": self._task(inputs, labels, LABEL_PREFIX, "label")}
        if self.rationale:
            rationales = [str(t) for t in batch["rationale"]]
            out["rationale"] = self._task(inputs, rationales, RATIONALE_PREFIX, "rationale")
        return out


def length_grouped(
    batch: Mapping[str, Sequence[str]], micro_batch_size: int, rng: random.Random, sort: bool = True
) -> list[dict[str, list[str]]]:
    """Splits a fetched batch into full micro-batches of similar length, in shuffled order.

    Rows sorted by text length pad less when batched together: rationales vary several-fold
    in length, and padding is compute spent on nothing. Rows past the last full micro-batch
    are dropped (every worker holds the same number of rows, so all drop alike).
    """
    columns = list(batch)
    n = len(batch[columns[0]])
    order = list(range(n))
    if sort:
        order.sort(key=lambda i: sum(len(str(batch[c][i])) for c in columns))
    groups = [order[i : i + micro_batch_size] for i in range(0, n, micro_batch_size)]
    groups = [g for g in groups if len(g) == micro_batch_size]
    rng.shuffle(groups)
    return [{c: [str(batch[c][i]) for i in g] for c in columns} for g in groups]
