"""The S3 endpoint going away mid-stage: generation shards and training checkpoints on S3.

Every process of this module's Ray cluster (driver, Ray Data and Ray Train workers, the
teacher replica) reaches the real S3 test server through `TcpOutage`, a TCP proxy that can
refuse and reset every connection for a while, as a restarting S3 server does to its
clients (the server behind keeps its objects, as one with disks would). The stages ride the
outage out on their S3 clients' retries (`storage.S3_MAX_ATTEMPTS`) and finish with every
row and step, each once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest
from chaos_record import record
from local_ray import local_ray
from students import tiny_training_overrides
from tcp_outage import TcpOutage

from dsbs import storage
from dsbs.config import load_config
from dsbs.data.synth import synth
from dsbs.generate import generate_rationales
from dsbs.generate.stage import config_hash
from dsbs.records import read_records
from dsbs.train.trainer import train_student

pytestmark = pytest.mark.slow

OUTAGE_S = 8.0
"""Seconds the endpoint is gone: longer than botocore's default retries last (5 tries)."""
ROWS = 24


@pytest.fixture(scope="module")
def outage(s3_server: str) -> Iterator[TcpOutage]:
    """The proxy, named by AWS_ENDPOINT_URL for this module's Ray cluster and driver."""
    parsed = urlparse(s3_server)
    proxy = TcpOutage((parsed.hostname or "127.0.0.1", parsed.port or 80))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with local_ray(2):
            yield proxy
    proxy.close()


def _direct_keys(s3_server: str, prefix: str) -> list[str]:
    """Keys under an s3:// prefix, asked of the server itself (not through the proxy)."""
    import boto3

    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=s3_server)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _outage_when(ready: Callable[[], bool], proxy: TcpOutage) -> threading.Thread:
    """A thread that takes the endpoint down once `ready()`, once."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if ready():
                proxy.down(OUTAGE_S)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.chaos
def test_generation_rides_out_the_s3_endpoint_restarting_during_shard_writes(
    outage, s3_server, s3_bucket, tmp_path
):
    source = tmp_path / "in.jsonl"
    synth("arithmetic", ROWS, 5, str(source))
    cfg = load_config(
        None,
        [
            f"data.source={source}",
            f"pipeline.run_dir={s3_bucket}/gen",
            "teacher.max_tokens=48",
            "generate.shard_rows=4",
            "generate.max_in_flight=8",
        ],
    )
    out = storage.join(
        cfg.pipeline.run_dir, "generate", config_hash(cfg.data, cfg.teacher, cfg.generate)
    )
    done = f"{out}/done/"
    watcher = _outage_when(lambda: bool(_direct_keys(s3_server, done)), outage)
    before = len(outage.outages)
    summary = generate_rationales(cfg.data, cfg.teacher, cfg.generate, cfg.pipeline.run_dir)
    watcher.join(timeout=OUTAGE_S + 30)
    assert len(outage.outages) == before + 1, "the endpoint was never taken down"
    shards_after = len(_direct_keys(s3_server, done))
    inputs = [r.id for r in read_records(storage.join(out, "inputs"))]
    data = [r.id for r in read_records(storage.join(out, "data"))]
    quarantine = [
        json.loads(line)
        for file in storage.list_files(storage.join(out, "quarantine"))
        for line in storage.read_bytes(file).decode().splitlines()
    ]
    ended = data + [q["id"] for q in quarantine]
    assert sorted(ended) == sorted(inputs) and len(inputs) == ROWS  # each row exactly once
    assert summary.written == len(data)
    reasons = Counter(q["reason"] for q in quarantine)
    assert not reasons.get("teacher error"), reasons
    record(
        "generation: the S3 endpoint restarting during shard writes",
        f"every S3 connection refused and reset for {OUTAGE_S:.0f} s after the first shard "
        "was written (run directory on S3)",
        sent=ROWS,
        answered=len(data),
        errors=0,
        lost=len(set(inputs) - set(ended)),
        detail=f"{shards_after} shards written, each row once; quarantined with a reason: "
        + (", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"),
    )


@pytest.mark.chaos
def test_training_rides_out_the_s3_endpoint_restarting_during_a_checkpoint_upload(
    outage, s3_server, s3_bucket, tmp_path
):
    data = str(tmp_path / "synth.jsonl")
    synth("arithmetic", 300, 0, data, rationales=True)
    run_dir = f"{s3_bucket}/train-run"
    cfg = load_config(
        None,
        tiny_training_overrides(data, run_dir, "train.max_steps=36", "train.max_failures=2"),
    )

    def uploading() -> bool:
        return any("/checkpoints/checkpoint_" in k for k in _direct_keys(s3_server, run_dir))

    watcher = _outage_when(uploading, outage)
    before = len(outage.outages)
    summary = train_student(cfg.train, cfg.student, cfg.data.task, cfg.pipeline.run_dir)
    watcher.join(timeout=OUTAGE_S + 30)
    assert len(outage.outages) == before + 1, "the endpoint was never taken down"
    text = storage.read_bytes(storage.join(summary.output, "metrics.jsonl")).decode()
    history = [json.loads(line) for line in text.splitlines()]
    steps = [r["step"] for r in history if r["split"] == "train"]
    resumed = [r["step"] for r in history if r["split"] == "resume"]
    assert summary.steps == 36 and steps == list(range(1, 37)), steps
    print(f"S3 outage during a checkpoint upload: resumed at {resumed or 'no restart'}")
    record(
        "training: the S3 endpoint restarting during a checkpoint upload",
        f"every S3 connection refused and reset for {OUTAGE_S:.0f} s once the first checkpoint's "
        "files began to land (checkpoints and export on S3)",
        sent=36,
        answered=summary.steps,
        errors=0,
        lost=len(set(range(1, 37)) - set(steps)),
        detail=(
            f"resumed at step {resumed[0]} after a restart"
            if resumed
            else "no restart: the uploads' retries rode it out"
        )
        + "; steps 1..36 each logged once",
    )


def test_the_proxy_refuses_while_down_and_forwards_after(outage, s3_bucket):
    """The fault itself: while down, S3 calls fail as against a stopped server (a client
    with retries off sees the refusal); after, the objects written before are all there."""
    import boto3
    from botocore.config import Config

    storage.write_bytes(f"{s3_bucket}/before.txt", b"kept")
    bucket = s3_bucket.removeprefix("s3://")
    strict = boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
    )
    failed: list[str] = []

    def try_during() -> None:
        time.sleep(0.5)
        try:
            strict.get_object(Bucket=bucket, Key="before.txt")
        except Exception as err:  # what a client sees: a connection error of its library
            failed.append(type(err).__name__)

    probe = threading.Thread(target=try_during)
    probe.start()
    outage.down(2.0)
    probe.join()
    assert failed, "a call during the outage went through"
    assert storage.read_bytes(f"{s3_bucket}/before.txt") == b"kept"
