"""Small students for the tests (tests/ is on sys.path via its conftest).

`make_tiny_student`: an export for the serving tests, trained in plain torch for a few hundred
steps on both tasks, so that its answers are real token sequences (a random student answers
with an empty string) and differ between inputs. `tiny_training_overrides`: the config of a
training of seconds, for the tests that train through Ray Train.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from dsbs.student.export import LABEL_PREFIX, RATIONALE_PREFIX, StudentInfo, save_student
from dsbs.student.presets import build_config
from dsbs.student.tokenizer import train_tokenizer


def tiny_training_overrides(data: str, run_dir: str, *extra: str) -> list[str]:
    """Config overrides that train a t5-tiny on `data` (synthetic svamp rows) in seconds.

    Checkpoints and validation every 12 steps; `extra` (steps among them) comes last and wins.
    """
    return [
        f"train.data={data}",
        f"pipeline.run_dir={run_dir}",
        "data.task=svamp",
        "student.vocab_size=300",
        "student.max_input_length=64",
        "student.max_target_length=48",
        "train.micro_batch_size=8",
        "train.eval_every=12",
        "train.checkpoint_every=12",
        "train.eval_max_rows=16",
        *extra,
    ]


def arithmetic_pairs() -> list[tuple[str, str, str]]:
    """(input, label, rationale) rows: small additions."""
    return [
        (f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}.")
        for a in range(20)
        for b in range(20)
    ]


def make_tiny_student(out: Path, steps: int = 300, seed: int = 0) -> Path:
    """Trains a t5-tiny on both tasks and exports it to `out`; returns `out`."""
    from transformers import T5ForConditionalGeneration

    rows = arithmetic_pairs()
    examples = [(LABEL_PREFIX + x, y) for x, y, _ in rows] + [
        (RATIONALE_PREFIX + x, r) for x, _, r in rows
    ]
    tokenizer = train_tokenizer([t for pair in examples for t in pair], 160, out.parent / "tok")
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(build_config("t5-tiny", len(tokenizer)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)  # noqa: S311 - sampling batches, not secrets
    model.train()
    for _ in range(steps):
        batch = rng.sample(examples, 32)
        enc = tokenizer([x for x, _ in batch], return_tensors="pt", padding=True)
        labels = tokenizer([y for _, y in batch], return_tensors="pt", padding=True).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        model(**enc, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    info = StudentInfo(
        task="svamp",
        mode="distill_step_by_step",
        preset="t5-tiny",
        max_input_length=32,
        max_target_length=16,
        steps=steps,
        version="tiny-test",
    )
    save_student(model, tokenizer, info, str(out))
    return out
