"""Stage 1: rationale generation, streaming inputs through the teacher with Ray Data.

    inputs (records or raw task rows; jsonl/parquet/csv/HF; local or s3://)
      -> [driver] input records with unique ids in shards, bad rows quarantined  (inputs.py)
      -> [driver] which shards to send: not done, or teacher errors to retry     (shards.py)
      -> [Ray Data] TeacherCaller actors read those shards and call the teacher (Serve
         handle or OpenAI URL, in flight adapted to the teacher's latency, sized to its
         replica range)                                                        (caller.py)
      -> [driver] a bar per answered row, overload warnings                      (progress.py)
      -> [driver] vote / parse / filter -> each input shard written whole        (outcomes.py)
      -> [driver] stats.json, the manifest, the one-line summary                 (summary.py)

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
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    TEACHER_ERROR,
    UNPARSEABLE,
    outcome_of,
)
from dsbs.generate.progress import ProgressBoard, ProgressWatch
from dsbs.generate.shards import ResumePlan, ShardWork, ShardWriter, plan_resume
from dsbs.generate.summary import GenerateSummary, RunCounts, write_stats
from dsbs.records import Record
from dsbs.rundir import StageOutput, stage_hash
from dsbs.tasks import Task, get_task
from dsbs.tasks.base import STOP_SEQUENCES

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
    plan = plan_resume(out_dir, inputs, task)
    if plan.retried:
        log.info("retrying %d rows that failed at the teacher in an earlier run", plan.retried)
    # The budget counts bad input rows (final) and this run's teacher errors, so an earlier
    # outage does not fail every rerun before its first call.
    errors = Counter({BAD_ROW: inputs.bad})
    _check_budget(errors, inputs.rows_in, generate.max_error_fraction, out_dir)
    run = RunCounts(skipped=plan.skipped)
    if inputs.rows > plan.skipped:
        with _teacher_on_cluster(teacher, ray_address, teacher_loader, serve_http):
            _answer(task, teacher, generate, inputs, plan, errors, run, out_dir)
    summary = write_stats(output, inputs, run, time.monotonic() - started)
    log.info(summary.line())
    return summary


@contextmanager
def _teacher_on_cluster(
    teacher: TeacherConfig,
    ray_address: str | None,
    loader: Callable[[TeacherConfig], Any] | None,
    serve_http: ServeConfig | None,
) -> Iterator[None]:
    """Ray joined and the teacher up for the block.

    Engines Serve hosts (TEACHERS[...].deployed) are deployed first and deleted after, unless
    teacher.keep_running; an `openai` teacher is someone else's server.
    """
    ensure_ray(ray_address)
    deployed = TEACHERS[teacher.engine].deployed
    if deployed:
        http = serve_http or ServeConfig()
        start_serve(http.host, http.port)
        _deploy_teacher(teacher, loader)
    try:
        yield
    finally:
        if deployed and not teacher.keep_running:
            from ray import serve

            from dsbs.generate.deployment import APP_NAME

            serve.delete(APP_NAME)


def _answer(
    task: Task,
    teacher: TeacherConfig,
    generate: GenerateConfig,
    inputs: Inputs,
    plan: ResumePlan,
    errors: Counter[str],
    run: RunCounts,
    out_dir: str,
) -> None:
    """Streams the planned shards through the teacher and writes each as its rows come back.

    Counts into `run` and `errors`; raises GenerationError once errors pass the budget.
    """
    import ray

    rows_of = {w.index: inputs.counts[w.index] for w in plan.work}
    writer = ShardWriter(out_dir, task, plan.work, rows_of)
    since = time.monotonic()
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    try:
        with (
            tqdm(total=inputs.rows - plan.skipped, desc="generate", unit="row") as bar,
            ProgressWatch(board, bar, teacher.request_timeout_s) as watch,
        ):
            for batch in _stream(teacher, generate, plan.work, board).iter_batches(
                batch_size=None, batch_format="pyarrow"
            ):
                for row in batch.to_pylist():
                    record, bad = _outcome_for(task, row, generate.require_gold_match)
                    if not writer.add(row["shard"], row["id"], record, bad):
                        continue  # a retried Ray Data task repeated the row
                    run.count(row)
                    if bad is not None and bad["reason"] in ERROR_REASONS:
                        errors[bad["reason"]] += 1
                _check_budget(errors, inputs.rows_in, generate.max_error_fraction, out_dir)
        run.timeouts, run.in_flight = watch.last["timeouts"], watch.last["limit"]
        # Throughput counts the streaming phase only, not the teacher's start-up or shutdown.
        run.streaming_s = time.monotonic() - since
    finally:
        writer.close()
