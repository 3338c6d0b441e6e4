"""Stage 1: rationale generation, streaming inputs through the teacher with Ray Data.

    inputs (records or raw task rows; jsonl/parquet/csv/HF; local or s3://)
      -> [driver] input records with unique ids in shards, bad rows quarantined  (inputs.py)
      -> [driver] which shards to send: not done, or teacher errors to retry     (shards.py)
      -> [Ray Data] TeacherCaller actors read those shards and call the teacher (Serve
         handle or OpenAI URL, in flight adapted to the teacher's latency, sized to its
         replica range)                                                        (caller.py)
      -> [driver] a bar per answered row, overload warnings                      (progress.py)
      -> [driver] vote / parse / filter -> each input shard written whole        (outcomes.py)

Exactly once: the driver is the only writer; an input shard's outcomes are written
atomically once all its rows are back, its counts last (shards.py), so a rerun skips the
done shards before any teacher call - except rows quarantined as teacher errors: an outage
is not the row's fault, so a rerun asks the teacher again for those. The output folder is
named by a hash of everything that changes what the teacher writes (task, source, teacher,
sampling, prompt), so a changed prompt or teacher starts a new output instead of mixing
into the old one.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from dsbs import storage
from dsbs.cluster import ensure_ray, start_serve
from dsbs.config import DataConfig, GenerateConfig, ServeConfig, TeacherConfig
from dsbs.data.quarantine import check_budget, quarantine_row
from dsbs.errors import DsbsError
from dsbs.generate.caller import teacher_request
from dsbs.generate.engines import TEACHERS
from dsbs.generate.inputs import Inputs, prepare_inputs
from dsbs.generate.outcomes import (
    BAD_ROW,
    ERROR_REASONS,
    GOLD_MISMATCH,
    TEACHER_ERROR,
    UNPARSEABLE,
    outcome_of,
)
from dsbs.generate.progress import ProgressBoard, ProgressWatch
from dsbs.generate.shards import (
    ShardCounts,
    ShardWork,
    ShardWriter,
    plan_resume,
    read_counts,
)
from dsbs.records import Record
from dsbs.rundir import StageOutput, stage_hash, write_json
from dsbs.tasks import Task, get_task
from dsbs.tasks.base import STOP_SEQUENCES
from dsbs.teachers.client import percentile

log = logging.getLogger(__name__)

OPENAI_IN_FLIGHT = 64
"""Requests in flight to an `openai` endpoint when generate.max_in_flight is unset."""

CALLER_IN_FLIGHT = 256
"""Most requests one caller actor keeps in flight; a larger load gets more callers."""


@dataclass(frozen=True)
class Load:
    """The load the stage offers the teacher: requests in flight, split over caller actors."""

    in_flight: int
    callers: int

    @property
    def per_caller(self) -> int:
        """Each caller's bound (its `InFlightLimit` maximum)."""
        return math.ceil(self.in_flight / self.callers)


def offered_load(teacher: TeacherConfig, generate: GenerateConfig) -> Load:
    """Requests in flight and callers: enough for Serve to run teacher.max_replicas, full.

    Serve's autoscaler sizes the teacher at ongoing requests / target_ongoing_requests, so
    the stage must keep max_replicas x target_ongoing_requests requests in flight to reach
    max_replicas (one caller with 64 never got past 2 replicas at the default target of 32).
    By default it offers what those replicas accept (max_ongoing_requests each), so every
    engine can run its full batch; the callers' adaptive limits stay below that while answers
    slow. A smaller explicit generate.max_in_flight is kept, with a warning naming both keys.
    """
    if not TEACHERS[teacher.engine].deployed:
        in_flight = generate.max_in_flight or OPENAI_IN_FLIGHT
    else:
        reach = teacher.max_replicas * teacher.target_ongoing_requests
        in_flight = generate.max_in_flight or teacher.max_replicas * teacher.max_ongoing_requests
        if in_flight < reach:
            log.warning(
                "generate.max_in_flight=%d keeps too few requests in flight for "
                "teacher.max_replicas=%d: Serve scales to about %d replica(s) at "
                "teacher.target_ongoing_requests=%d; set generate.max_in_flight to %d or "
                "leave it unset",
                in_flight,
                teacher.max_replicas,
                max(1, math.ceil(in_flight / teacher.target_ongoing_requests)),
                teacher.target_ongoing_requests,
                reach,
            )
    return Load(in_flight, math.ceil(in_flight / CALLER_IN_FLIGHT))


SCHEMA_VERSION = 2
"""Bumped when the output format changes, so old outputs are not resumed into."""


class GenerationError(DsbsError):
    """The stage failed: past the error budget, or the teacher could not be started.

    The budget (generate.max_error_fraction) counts bad input rows and teacher errors.
    """


@dataclass(frozen=True)
class GenerateSummary:
    """What a generate run did; `line()` is the one-line summary."""

    output: str
    rows_in: int
    written: int
    quarantined: dict[str, int]
    teacher_calls: int
    """Inputs sent to the teacher in this run (not counting retries)."""
    retries: int
    """Attempts beyond the first, over this run's inputs."""
    timeouts: int
    """Attempts that timed out (and were aborted in the engine) in this run."""
    in_flight: int
    """Requests in flight at the end, as the adaptive limit left it."""
    skipped: int
    """Inputs already done by an earlier run of the same config."""
    parse_rate: float
    agreement_with_gold: float | None
    output_tokens_per_s: float
    wall_time_s: float

    def line(self) -> str:
        """The summary line printed at the end."""
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.quarantined.items())) or "none"
        gold = "n/a" if self.agreement_with_gold is None else f"{self.agreement_with_gold:.1%}"
        return (
            f"generate: {self.rows_in} rows in, {self.written} written, quarantined: {reasons}; "
            f"{self.teacher_calls} teacher calls ({self.skipped} rows already done, "
            f"{self.retries} retries, {self.timeouts} timeouts); "
            f"parse rate {self.parse_rate:.1%}, agreement with gold {gold}; "
            f"{self.output_tokens_per_s:.1f} output tokens/s at {self.in_flight} in flight; "
            f"{self.wall_time_s:.1f} s "
            f"-> {self.output}"
        )


def config_hash(data: DataConfig, teacher: TeacherConfig, generate: GenerateConfig) -> str:
    """A short hash of everything that changes what the teacher is asked and how it answers.

    The sections' output keys (`OUTPUT_KEYS`), the prompt and the stop sequences; the input
    files count by what they are now (storage.fingerprint): replaced or appended inputs make a
    new output folder instead of being reported as done.
    """
    request = teacher_request(teacher, data.task, "", "{input}", 1)
    template = request.messages if teacher.prompt_style == "chat" else request.prompt
    return stage_hash(
        {"data": data, "teacher": teacher, "generate": generate},
        {
            "version": SCHEMA_VERSION,
            "source_files": storage.fingerprint(data.source) if data.source else None,
            "prompt": template,
            "stop": STOP_SEQUENCES,
        },
    )


def _check_budget(errors: Counter[str], total: int, max_fraction: float, out_dir: str) -> None:
    check_budget(
        errors,
        total,
        max_fraction,
        "generate.max_error_fraction",
        storage.join(out_dir, "quarantine"),
        error=GenerationError,
    )


def _deploy_teacher(teacher: TeacherConfig, loader: Callable[[TeacherConfig], Any] | None) -> None:
    """Starts the teacher app, failing after teacher.startup_timeout_s instead of waiting on.

    serve.run waits until the app runs, forever where no node can hold a replica (a GPU
    teacher on a cluster without such GPUs); so the app is deployed without waiting and its
    status watched here.
    """
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from dsbs.generate.deployment import APP_NAME, load_teacher, teacher_app

    log.info(
        "starting the teacher (%s) in Ray Serve; loading the model takes a while", teacher.model
    )
    target = serve.RunTarget(
        target=teacher_app(teacher, loader or load_teacher, access_log=False),
        name=APP_NAME,
        route_prefix=None,
    )
    try:
        [handle] = serve.run_many([target], wait_for_applications_running=False)
    except Exception as err:
        raise GenerationError(f"the teacher deployment did not start: {err}") from err
    deadline = time.monotonic() + teacher.startup_timeout_s
    while True:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            break
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise GenerationError(f"the teacher deployment did not start: {status.message}")
        if time.monotonic() > deadline:
            reason = _unplaced_reason(teacher)
            serve.delete(APP_NAME)
            raise GenerationError(reason)
        time.sleep(1)
    log.info("teacher: %s", handle.describe.remote().result(timeout_s=60))


def _unplaced_reason(teacher: TeacherConfig) -> str:
    """Why the teacher is not up: what a replica asks for, what the cluster has, Serve's words."""
    import ray
    from ray import serve

    from dsbs.generate.deployment import APP_NAME
    from dsbs.teachers.vllm import replica_gpus

    asked = {"CPU": teacher.num_cpus, "GPU": replica_gpus(teacher)}
    nodes = [
        {k: v for k, v in node["Resources"].items() if k in ("CPU", "GPU")}
        for node in ray.nodes()
        if node.get("Alive")
    ]
    status = serve.status().applications.get(APP_NAME)
    said = "; ".join(
        d.message for d in (status.deployments.values() if status else []) if d.message
    )
    return (
        "the teacher did not start within "
        f"teacher.startup_timeout_s={teacher.startup_timeout_s:g} s: each replica asks for "
        f"{asked} on one node (teacher.num_cpus; tensor_parallel_size x pipeline_parallel_size "
        f"GPUs with teacher.use_gpu), and the cluster's nodes have {nodes}. "
        f"Serve: {said or 'no message'}"
    )


def _stream(
    teacher: TeacherConfig, generate: GenerateConfig, work: list[ShardWork], board: Any
) -> Any:
    """The Ray Data pipeline: input shards to send -> teacher texts, per shard (lazy)."""
    import ray.data

    from dsbs.generate.caller import TeacherCaller
    from dsbs.generate.deployment import APP_NAME

    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver shows one bar
    load = offered_load(teacher, generate)
    log.info(
        "offering the teacher up to %d requests in flight through %d caller(s)",
        load.in_flight,
        load.callers,
    )
    # One Ray Data task per input shard, which the caller reads itself. A task ends with its
    # slowest row, so the actor holds shards for twice its bound: rows wait at its
    # InFlightLimit (which keeps what is sent at most per_caller) instead of the limit
    # waiting for rows while a shard's last answers straggle (measured: 60 of 109 in flight).
    calls = math.ceil(2 * load.per_caller / max(w.rows for w in work)) + 1
    # The shard list goes in as items: Ray's file readers plan a listing task that needs a
    # whole CPU, which a small cluster busy with the teacher may not have free.
    return ray.data.from_items(
        [{"file": w.file, "shard": w.index, "only": w.only} for w in work],
        override_num_blocks=len(work),
    ).map_batches(
        TeacherCaller,
        fn_constructor_kwargs={
            "cfg": teacher,
            "num_samples": generate.num_samples,
            "max_in_flight": load.per_caller,
            "app_name": APP_NAME,
            "board": board,
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            size=load.callers,
            max_tasks_in_flight_per_actor=calls,
            max_concurrent_calls_per_actor=calls,
        ),
        num_cpus=0.1,  # network-bound; leave the cores to the teacher
    )


def _outcome_for(
    task: Task, row: dict[str, Any], require_gold_match: bool
) -> tuple[Record | None, dict[str, Any] | None]:
    """One teacher answer as a record to write or a quarantine row (exactly one is set)."""
    tokens = {"prompt_tokens": row["prompt_tokens"], "output_tokens": row["output_tokens"]}
    if row["error"]:
        return None, quarantine_row(row["id"], TEACHER_ERROR, row["error"], input=row["input"])
    outcome = outcome_of(task, row, row["texts"], require_gold_match)
    if outcome.record is not None:
        outcome.record.meta = {**outcome.record.meta, "teacher_tokens": tokens}
        return outcome.record, None
    bad = quarantine_row(
        row["id"],
        outcome.reason or UNPARSEABLE,
        outcome.detail,
        input=row["input"],
        label=row["label"],
        texts=row["texts"],
        **tokens,
    )
    return None, bad


def generate_rationales(
    data: DataConfig,
    teacher: TeacherConfig,
    generate: GenerateConfig,
    run_dir: str,
    ray_address: str | None = None,
    teacher_loader: Callable[[TeacherConfig], Any] | None = None,
    serve_http: ServeConfig | None = None,
) -> GenerateSummary:
    """Runs (or resumes) rationale generation into `run_dir/generate/<hash>/`.

    Args:
        data: the task and input source.
        teacher: the teacher engine, model, sampling and replicas.
        generate: self-consistency, filters, in-flight bound, shard size, error budget.
        run_dir: the run directory (local or s3://).
        ray_address: a Ray cluster to join; None joins the job's cluster or starts one.
        teacher_loader: builds the engine inside each teacher replica (engine=vllm); None is
            vLLM. Tests pass a small real engine of their own.
        serve_http: the `serve` section, whose host and port Serve's HTTP proxy takes if this
            stage is the first to start Serve on the cluster; None takes its defaults.

    Returns:
        The summary (also written to stats.json and manifest.json).

    Raises:
        GenerationError: past the error budget, or when the teacher cannot start.
    """
    started = time.monotonic()
    task = get_task(data.task)
    output = StageOutput(run_dir, "generate", config_hash(data, teacher, generate))
    out_dir = output.path
    output.write_config({"data": data, "teacher": teacher, "generate": generate}, {})
    inputs = prepare_inputs(task, data.source, out_dir, generate.shard_rows)
    total = inputs.rows + inputs.bad
    plan = plan_resume(out_dir, inputs, task)
    if plan.retried:
        log.info("retrying %d rows that failed at the teacher in an earlier run", plan.retried)
    # The budget counts bad input rows (final) and this run's teacher errors, so an earlier
    # outage does not fail every rerun before its first call.
    errors = Counter({BAD_ROW: inputs.bad})
    _check_budget(errors, total, generate.max_error_fraction, out_dir)
    todo = inputs.rows - plan.skipped
    calls, output_tokens, retries = 0, 0, 0
    streaming = 0.0
    latencies = LatencySample()
    load: dict[str, Any] = {"timeouts": 0, "limit": 0}
    if todo > 0:
        ensure_ray(ray_address)
        deployed = TEACHERS[teacher.engine].deployed
        if deployed:
            http = serve_http or ServeConfig()
            start_serve(http.host, http.port)
            _deploy_teacher(teacher, teacher_loader)
        import ray

        rows_of = {w.index: inputs.counts[w.index] for w in plan.work}
        writer = ShardWriter(out_dir, task, plan.work, rows_of)
        streaming_since = time.monotonic()
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        try:
            with (
                tqdm(total=todo, desc="generate", unit="row") as bar,
                ProgressWatch(board, bar, teacher.request_timeout_s) as watch,
            ):
                for batch in _stream(teacher, generate, plan.work, board).iter_batches(
                    batch_size=None, batch_format="pyarrow"
                ):
                    for row in batch.to_pylist():
                        record, bad = _outcome_for(task, row, generate.require_gold_match)
                        if not writer.add(row["shard"], row["id"], record, bad):
                            continue  # a retried Ray Data task repeated the row
                        calls += 1
                        output_tokens += row["output_tokens"] or 0
                        retries += row["attempts"] - 1
                        latencies.add(row["latency_s"])
                        if bad is not None and bad["reason"] in ERROR_REASONS:
                            errors[bad["reason"]] += 1
                    _check_budget(errors, total, generate.max_error_fraction, out_dir)
            load = watch.last
            # Throughput counts the streaming phase only: the teacher's start-up and its
            # shutdown below (seconds in serve.delete) are not generation.
            streaming = time.monotonic() - streaming_since
        finally:
            writer.close()
            if deployed and not teacher.keep_running:
                from ray import serve

                from dsbs.generate.deployment import APP_NAME

                serve.delete(APP_NAME)
    wall = time.monotonic() - started
    this_run = RunCounts(
        calls,
        plan.skipped,
        retries,
        load["timeouts"],
        load["limit"],
        output_tokens,
        latencies.values,
    )
    summary = _write_stats(task, output, inputs, this_run, wall, streaming)
    log.info(summary.line())
    return summary


@dataclass(frozen=True)
class RunCounts:
    """What this run (not earlier runs of the same config) did with the teacher."""

    calls: int
    skipped: int
    retries: int
    timeouts: int
    in_flight: int
    output_tokens: int
    latencies: list[float]
    """Seconds from an input's first attempt to its answer, retries included: a uniform
    sample of at most LatencySample.SIZE inputs."""


class LatencySample:
    """A uniform sample of a run's latencies (reservoir sampling).

    Its percentiles stand for the run's, in memory that does not grow with the run.
    """

    SIZE = 10_000

    def __init__(self) -> None:
        self.values: list[float] = []
        self.seen = 0
        self._rng = random.Random(0)  # noqa: S311 - sampling, not security

    def add(self, value: float) -> None:
        """Counts one latency; keeps it with probability SIZE / seen."""
        self.seen += 1
        if len(self.values) < self.SIZE:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.SIZE:
            self.values[slot] = value


def _write_stats(
    task: Task, output: StageOutput, inputs: Inputs, run: RunCounts, wall: float, streaming: float
) -> GenerateSummary:
    """Counts over the whole output (every run of this config), throughput for this run.

    Summed from the shards' counts: no row is read again.
    """
    out_dir = output.path
    whole = ShardCounts(0)
    for counts in read_counts(out_dir).values():
        whole.add(counts)
    by_reason = Counter(whole.quarantined)
    if inputs.bad:
        by_reason[BAD_ROW] += inputs.bad
    written, correct, with_gold = whole.written, whole.correct, whole.with_gold
    prompt_total, output_total = whole.prompt_tokens, whole.output_tokens
    answered = written + by_reason[UNPARSEABLE] + by_reason[GOLD_MISMATCH]
    summary = GenerateSummary(
        output=storage.join(out_dir, "data"),
        rows_in=inputs.rows + inputs.bad,
        written=written,
        quarantined=dict(by_reason),
        teacher_calls=run.calls,
        retries=run.retries,
        timeouts=run.timeouts,
        in_flight=run.in_flight,
        skipped=run.skipped,
        parse_rate=(written + by_reason[GOLD_MISMATCH]) / answered if answered else 0.0,
        agreement_with_gold=correct / with_gold if with_gold else None,
        output_tokens_per_s=run.output_tokens / streaming if streaming > 0 else 0.0,
        wall_time_s=wall,
    )
    stats = {
        "rows_in": summary.rows_in,
        "written": written,
        "quarantined": dict(by_reason),
        "duplicate_ids": inputs.duplicates,
        "parse_rate": summary.parse_rate,
        "agreement_with_gold": summary.agreement_with_gold,
        "prompt_tokens": prompt_total,
        "output_tokens": output_total,
        "this_run": {
            "teacher_calls": run.calls,
            "skipped_already_done": summary.skipped,
            "retries": run.retries,
            "timeouts": run.timeouts,
            "in_flight_at_end": run.in_flight,
            "latency_p50_s": percentile(run.latencies, 0.5),
            "latency_p90_s": percentile(run.latencies, 0.9),
            "output_tokens": run.output_tokens,
            "output_tokens_per_s": summary.output_tokens_per_s,
            "streaming_s": streaming,
            "wall_time_s": wall,
        },
    }
    write_json(storage.join(out_dir, "stats.json"), stats)
    output.finish(
        complete=written + sum(by_reason.values()) == summary.rows_in,
        counts={
            "rows_in": summary.rows_in,
            "written": written,
            "quarantined": sum(by_reason.values()),
        },
    )
    return summary
