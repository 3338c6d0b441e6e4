"""The run directory's layout (local path or s3://), shared by the stages and `dsbs run`.

RUN/generate/manifest.json         which output is current (config hash)
RUN/generate/<hash>/inputs/         the normalised input records, with ids
RUN/generate/<hash>/data/           rationale records (parquet shards)
RUN/generate/<hash>/quarantine/     rows that did not make it, with the reason
RUN/generate/<hash>/done/           each finished input shard's counts (written last)
RUN/generate/<hash>/stats.json      counts, parse rate, tokens, throughput
RUN/generate/<hash>/manifest.json   counts and the config hash, written last
RUN/train/manifest.json            which training output is current (config hash)
RUN/train/<hash>/tokenizer/         the student's tokenizer (trained on the task text)
RUN/train/<hash>/checkpoints/       DeepSpeed checkpoints reported through Ray Train
RUN/train/<hash>/student/           the exported student (Hugging Face folder + dsbs file)
RUN/train/<hash>/metrics.jsonl      per-step training and validation metrics
RUN/train/<hash>/metrics.json       final metrics (written last: marks a finished run)
RUN/report/ ...                     metrics.json, plots, index.html (pipeline)
"""

from __future__ import annotations

import json
from typing import Any

from dsbs import storage


def generate_root(run_dir: str) -> str:
    """RUN/generate."""
    return storage.join(run_dir, "generate")


def generate_dir(run_dir: str, config_hash: str) -> str:
    """RUN/generate/<hash>: one output per generation config."""
    return storage.join(run_dir, "generate", config_hash)


def train_root(run_dir: str) -> str:
    """RUN/train."""
    return storage.join(run_dir, "train")


def train_dir(run_dir: str, config_hash: str) -> str:
    """RUN/train/<hash>: one output per training config."""
    return storage.join(run_dir, "train", config_hash)


def current_student(run_dir: str) -> str:
    """The exported student of the current training output (what serving loads).

    Raises:
        FileNotFoundError: when the training stage has not completed in this run directory.
    """
    return storage.join(_current(train_root(run_dir), "training"), "student")


def _current(stage_root: str, stage: str) -> str:
    """RUN/<stage>/<hash> of the output the stage's manifest names as current."""
    manifest = read_json(storage.join(stage_root, "manifest.json"))
    if manifest is None:
        raise FileNotFoundError(f"{stage_root}: no completed {stage} output")
    return storage.join(stage_root, manifest["config_hash"])


def read_json(uri: str) -> dict[str, Any] | None:
    """A JSON object from a file, or None when the file does not exist."""
    if not storage.exists(uri):
        return None
    return json.loads(storage.read_bytes(uri))


def write_json(uri: str, data: dict[str, Any]) -> None:
    """Writes a JSON object atomically, pretty-printed for people who open it."""
    storage.write_bytes(uri, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def current_rationales(run_dir: str) -> str:
    """The data folder of the current generate output (what training reads).

    Raises:
        FileNotFoundError: when the generate stage has not completed in this run directory.
    """
    return storage.join(_current(generate_root(run_dir), "generate"), "data")
