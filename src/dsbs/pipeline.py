"""`dsbs run`: generate -> train -> evaluate -> report -> serve smoke test, on one Ray cluster.

Every stage writes under the one run directory (local or s3://) and skips what is already
there for the same config: generation resumes row by row and starts no teacher when every
row is done; training returns at once when its metrics.json exists (or resumes from its
latest checkpoint). A rerun after a failure therefore picks up where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dsbs import storage
from dsbs.auth import STUDENT_TOKEN_ENV, bearer_header
from dsbs.cluster import ensure_ray
from dsbs.config import Config, dump_config
from dsbs.generate import GenerateSummary, generate_rationales
from dsbs.model_cache import fetch_folder
from dsbs.report import percent, sweep_means, write_report
from dsbs.rundir import read_json
from dsbs.serve.api import input_token_limit
from dsbs.serve.backends import count_tokens
from dsbs.serve.runner import start_student, stop_student
from dsbs.student.export import LABEL_PREFIX
from dsbs.student.tokenizer import load_tokenizer
from dsbs.tasks import get_task
from dsbs.train.data import read_examples
from dsbs.train.examples import Example
from dsbs.train.trainer import TrainSummary, train_student

log = logging.getLogger(__name__)

SMOKE_INPUTS = 3


@dataclass
class RunSummary:
    """What `dsbs run` did; `line()` is the one-line summary."""

    run_dir: str
    report: str
    metrics: dict[str, Any]
    answers: list[dict[str, Any]] = field(default_factory=list)
    url: str | None = None

    def line(self) -> str:
        """The summary line printed at the end."""
        student = self.metrics["student"]
        seconds = sum(self.metrics["stage_seconds"].values())
        serving = (
            f"serving at {self.url} (Ctrl-C stops it)"
            if self.url
            else f"serve it with: dsbs serve --model {student['export']}"
        )
        right = sum(bool(a.get("correct")) for a in self.answers)
        return (
            f"run: student test accuracy {percent(student.get('test_accuracy'))} against the "
            f"teacher's {percent(student.get('teacher_test_accuracy'))} on the same "
            f"{student.get('test_rows', 0)} test rows after {student['steps']} steps; "
            f"smoke test over HTTP {right} of {len(self.answers)} right; {seconds:.0f} s; "
            f"report {self.report}; {serving}"
        )


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.monotonic()
    log.info("== %s", stage)
    try:
        yield
    finally:
        timings[stage] = round(time.monotonic() - started, 1)


def run_pipeline(cfg: Config) -> RunSummary:
    """Runs every stage for `cfg` into `cfg.pipeline.run_dir`; see the module docstring.

    With `pipeline.keep_serving` the student app stays up after the smoke test (the caller
    decides how long); otherwise it is deleted.

    Raises:
        GenerationError, TrainingError, FileNotFoundError, ValueError: from the stages.
    """
    run_dir, address = cfg.pipeline.run_dir, cfg.pipeline.ray_address
    ensure_ray(address)
    timings: dict[str, float] = {}
    with _timed(timings, "generate"):
        generated = generate_rationales(
            cfg.data, cfg.teacher, cfg.generate, run_dir, address, serve_http=cfg.serve
        )
        log.info(generated.line())
    with _timed(timings, "train"):
        trained = train_student(cfg.train, cfg.student, cfg.data.task, run_dir, address)
        log.info(trained.line())
    with _timed(timings, "evaluate"):
        # The training stage ends by scoring the export's weights on the held-out test split
        # with every rank; evaluation here reads those figures and the step history.
        final = read_json(storage.join(trained.output, "metrics.json"))
        if final is None:
            raise FileNotFoundError(f"{trained.output}: training finished without metrics.json")
        history = _history(trained.output)
    with _timed(timings, "serve"):
        questions = _smoke_examples(trained.output, cfg)
        url = start_student(cfg.serve, run_dir, address)
        try:
            answers = _ask(url, questions, cfg.data.task)
        finally:
            if not cfg.pipeline.keep_serving:
                stop_student()
    for answer in answers:
        verdict = {True: "right", False: "wrong", None: "no gold label"}[answer["correct"]]
        log.info(
            "smoke test: %r -> %r (gold %r: %s)",
            answer["input"],
            answer["label"],
            answer["gold"],
            verdict,
        )
    metrics = {
        **_metrics(generated, trained, final, timings),
        "setting": describe_setting(cfg),
        "smoke_test": answers,
    }
    report_dir = storage.join(run_dir, "report")
    write_report(report_dir, metrics, history, dump_config(cfg))
    return RunSummary(
        run_dir=run_dir,
        report=storage.join(report_dir, "index.html"),
        metrics=metrics,
        answers=answers,
        url=url if cfg.pipeline.keep_serving else None,
    )


def describe_setting(cfg: Config) -> str:
    """Which of the paper's settings a run trains in, in words (for the report)."""
    mode, generate = cfg.train.mode, cfg.generate
    if mode == "standard_finetune":
        return "standard finetuning: gold labels, no teacher output"
    if mode == "standard_distill":
        learned = "teacher labels, no rationales"
    elif cfg.train.label_source == "gold":
        return "distilling step-by-step with gold labels and the teacher's rationales"
    else:
        learned = "the teacher's labels and rationales"
    if generate.num_samples > 1:
        learned += f", self-consistency over {generate.num_samples} samples"
    if generate.require_gold_match:
        learned += ", only rows where the teacher's label matches gold"
    name = "distilling step-by-step" if mode == "distill_step_by_step" else "standard distillation"
    return f"{name} with {learned}"


def _history(train_out: str) -> list[dict[str, Any]]:
    text = storage.read_bytes(storage.join(train_out, "metrics.jsonl")).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _smoke_examples(train_out: str, cfg: Config) -> list[Example]:
    """The shortest rows the endpoint serves, held-out ones first (test, then valid, then train).

    Held-out rows, so that the answers shown say something about the student; only rows that
    fit, because the endpoint refuses any input longer than the student was trained on
    (training cut such inputs; serving says so with a 422).
    """
    manifest = read_json(storage.join(train_out, "data", "manifest.json")) or {}
    files = manifest.get("files", {})
    tokenizer = load_tokenizer(fetch_folder(storage.join(train_out, "student")))
    limit = input_token_limit(cfg.serve, cfg.student.max_input_length)
    chosen: list[Example] = []
    for split in ("test", "valid", "train"):
        rows = list(itertools.islice(read_examples(files.get(split, [])), 100))
        counts = count_tokens(tokenizer, [LABEL_PREFIX + e.input for e in rows])
        fits = [e for e, n in zip(rows, counts, strict=True) if n <= limit]
        chosen += sorted(fits, key=lambda e: len(e.input))[: SMOKE_INPUTS - len(chosen)]
        if len(chosen) == SMOKE_INPUTS:
            break
    return chosen


def _ask(url: str, examples: list[Example], task: str) -> list[dict[str, Any]]:
    """Posts the examples' inputs to the served student, as a client would, and scores them.

    Returns:
        One dict per example: input, the endpoint's answer, gold and whether it is right
        (None without a gold label).
    """
    questions = [e.input for e in examples]
    body = json.dumps({"inputs": questions, "rationale": False}).encode()
    request = urllib.request.Request(  # noqa: S310 - an http:// URL of our own app
        f"{url}/v1/predict",
        data=body,
        headers={"content-type": "application/json", **bearer_header(STUDENT_TOKEN_ENV)},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - our own app
        predictions = json.loads(response.read())["predictions"]
    metric = get_task(task)
    return [
        {
            "input": e.input,
            **p,
            "gold": e.gold or None,
            "correct": metric.is_correct(p["label"], e.gold) if e.gold else None,
        }
        for e, p in zip(examples, predictions, strict=True)
    ]


def _metrics(
    generated: GenerateSummary,
    trained: TrainSummary,
    final: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The report's figures: teacher, student, losses, throughput, stage timings."""
    rows_in = generated.rows_in
    test = final.get("test", {})
    return {
        "teacher": {
            "accuracy_against_gold": generated.agreement_with_gold,
            "kept_fraction": generated.written / rows_in if rows_in else None,
            "rows_in": rows_in,
            "rows_kept": generated.written,
            "quarantined": generated.quarantined,
            "parse_rate": generated.parse_rate,
            # Throughput of this run's teacher calls; None when every row was already done.
            "output_tokens_per_s": generated.output_tokens_per_s
            if generated.teacher_calls
            else None,
        },
        "student": {
            "export": storage.join(trained.output, "student"),
            "steps": trained.steps,
            "test_accuracy": test.get("label_accuracy"),
            "teacher_test_accuracy": test.get("teacher_accuracy"),
            "test_rows": test.get("rows"),
            "valid_accuracy": trained.valid_accuracy,
            "test_label_loss": test.get("label_loss"),
            "test_rationale_loss": test.get("rationale_loss"),
            "train_label_loss": trained.label_loss,
            "train_rationale_loss": trained.rationale_loss,
            "rows": trained.rows,
            "skipped": trained.skipped,
            "examples_per_s": trained.examples_per_s,
        },
        "stage_seconds": timings,
    }


@dataclass
class SweepSummary:
    """What `dsbs sweep` did; `line()` is the one-line summary."""

    report: str
    rows: list[dict[str, Any]]

    def line(self) -> str:
        """The summary line printed at the end: each mode's mean test accuracy on all rows."""
        means = sweep_means(self.rows)
        top = max((fraction for _, fraction in means), default=None)
        shown = ", ".join(
            f"{mode} {percent(accuracy)}"
            for (mode, fraction), accuracy in means.items()
            if fraction == top
        )
        seeds = len({r["seed"] for r in self.rows})
        teacher = [r["teacher_test_accuracy"] for r in self.rows]
        teacher_shown = (
            f"; teacher {percent(sum(teacher) / len(teacher))}"
            if teacher and None not in teacher
            else ""
        )
        return (
            f"sweep: {len(self.rows)} trainings ({seeds} seed{'s' if seeds > 1 else ''}); "
            f"test accuracy at {percent(top) if top else '-'} of the training rows: "
            f"{shown or 'none'}{teacher_shown}; report {self.report}"
        )


def sweep_pipeline(cfg: Config) -> SweepSummary:
    """Trains one student per (mode, training fraction, seed) of `cfg.sweep`; plots accuracy.

    The rationales are generated once (unless `train.data` names records); every training
    has its own config hash, so a rerun skips the trainings that finished. Writes
    RUN/report/sweep/ (metrics.json with one row per training, sweep.png, index.html).
    """
    run_dir, address = cfg.pipeline.run_dir, cfg.pipeline.ray_address
    ensure_ray(address)
    if not cfg.train.data:
        generated = generate_rationales(
            cfg.data, cfg.teacher, cfg.generate, run_dir, address, serve_http=cfg.serve
        )
        log.info(generated.line())
    rows = []
    for seed in cfg.sweep.seeds or [cfg.train.seed]:
        for mode in cfg.sweep.modes:
            for fraction in sorted(cfg.sweep.fractions):
                train = cfg.train.model_copy(
                    update={"mode": mode, "subsample": fraction, "seed": seed}
                )
                log.info(
                    "== sweep: %s on %.1f%% of the training set, seed %d",
                    mode,
                    100 * fraction,
                    seed,
                )
                trained = train_student(train, cfg.student, cfg.data.task, run_dir, address)
                log.info(trained.line())
                rows.append(
                    {
                        "mode": mode,
                        "fraction": fraction,
                        "seed": seed,
                        "train_rows": trained.rows["train"],
                        "test_rows": trained.rows["test"],
                        "test_accuracy": trained.test_accuracy,
                        "teacher_test_accuracy": trained.teacher_test_accuracy,
                        "valid_accuracy": trained.valid_accuracy,
                        "steps": trained.steps,
                        "output": trained.output,
                    }
                )
    report_dir = storage.join(run_dir, "report", "sweep")
    write_report(report_dir, {"sweep": rows}, [], dump_config(cfg), sweep=rows)
    return SweepSummary(storage.join(report_dir, "index.html"), rows)
