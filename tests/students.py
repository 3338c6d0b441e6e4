"""A tiny trained student export for the serving tests (tests/ is on sys.path via its conftest).

Trained in plain torch for a few hundred steps on both tasks, so that its answers are real
token sequences (a random student answers with an empty string) and differ between inputs.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from dsbs.student.export import LABEL_PREFIX, RATIONALE_PREFIX, StudentInfo, save_student
from dsbs.student.presets import build_config
from dsbs.student.tokenizer import train_tokenizer


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
