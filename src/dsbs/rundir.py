"""The run directory's layout (local path or s3://), shared by the stages and `dsbs run`.

RUN/<stage>/manifest.json          which output of the stage is current, and where it is
RUN/<stage>/<hash>/                one output per config: <hash> is `stage_hash` of what changes it
RUN/<stage>/<hash>/config.json     every setting and input that produced it
RUN/<stage>/<hash>/manifest.json   stage, hash, complete or not, counts (written last)
RUN/generate/<hash>/inputs/        the normalised input records, with ids
RUN/generate/<hash>/data/          rationale records (parquet shards)
RUN/generate/<hash>/quarantine/    rows that did not make it, with the reason
RUN/generate/<hash>/done/          each finished input shard's counts
RUN/generate/<hash>/stats.json     counts, parse rate, tokens, throughput
RUN/train/<hash>/data/             the split rows (train, valid, test) and their manifest
RUN/train/<hash>/tokenizer/        the student's tokenizer (trained on the task text)
RUN/train/<hash>/checkpoints/      DeepSpeed checkpoints reported through Ray Train
RUN/train/<hash>/student/          the exported student (Hugging Face folder + dsbs file)
RUN/train/<hash>/metrics.jsonl     per-step training and validation metrics
RUN/train/<hash>/metrics.json      final metrics (written by training's rank 0 when it ends)
RUN/report/ ...                    metrics.json, plots, index.html (pipeline)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from dsbs import storage
from dsbs.errors import NotFoundError

Stage = Literal["generate", "train"]

MANIFEST_SCHEMA = 1
"""Version of the stage manifest's layout (not of the outputs, which each stage versions)."""


def stage_hash(sections: Mapping[str, Any], inputs: Mapping[str, Any]) -> str:
    """A short hash of what changes a stage's output, which names its folder.

    That is the config sections' output keys (each section declares them, `OUTPUT_KEYS`) and
    the stage's other inputs (the input files' fingerprints, the prompt, a schema version).

    Args:
        sections: config sections by name (`{"teacher": cfg.teacher, ...}`).
        inputs: JSON-able values that are not config keys.
    """
    spec = {name: section.output_settings() for name, section in sections.items()}
    spec.update(inputs)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StageOutput:
    """RUN/<stage>/<hash>: one stage's output folder, and the files that say what it is."""

    run_dir: str
    stage: Stage
    config_hash: str

    @property
    def path(self) -> str:
        """RUN/<stage>/<hash>."""
        return storage.join(self.run_dir, self.stage, self.config_hash)

    def write_config(self, sections: Mapping[str, BaseModel], inputs: Mapping[str, Any]) -> None:
        """config.json: every setting of the sections (run-only keys too) and the inputs."""
        config = {name: section.model_dump(mode="json") for name, section in sections.items()}
        write_json(storage.join(self.path, "config.json"), {**config, **inputs})

    def finish(self, complete: bool, counts: Mapping[str, Any]) -> None:
        """Writes the output's manifest.json, then names this output the stage's current one.

        The stage's pointer is written after the output's manifest, so a reader that follows
        it always finds a finished output.
        """
        write_json(
            storage.join(self.path, "manifest.json"),
            {
                "schema": MANIFEST_SCHEMA,
                "stage": self.stage,
                "config_hash": self.config_hash,
                "complete": complete,
                "counts": dict(counts),
            },
        )
        write_json(
            storage.join(self.run_dir, self.stage, "manifest.json"),
            {"schema": MANIFEST_SCHEMA, "config_hash": self.config_hash, "output": self.path},
        )


def current_student(run_dir: str) -> str:
    """The exported student of the current training output (what serving loads).

    Raises:
        FileNotFoundError: when the training stage has not completed in this run directory.
    """
    return storage.join(current_output(run_dir, "train"), "student")


def current_output(run_dir: str, stage: Stage) -> str:
    """RUN/<stage>/<hash> of the output the stage's pointer names as current.

    Found by its hash under the given run directory (not by the path recorded when it was
    written), so a run directory copied elsewhere, or to S3, still resolves.

    Raises:
        FileNotFoundError: when the stage has not completed in this run directory.
    """
    root = storage.join(run_dir, stage)
    pointer = read_json(storage.join(root, "manifest.json"))
    if pointer is None:
        raise NotFoundError(f"{root}: no completed {stage} output")
    return storage.join(root, pointer["config_hash"])


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
    return storage.join(current_output(run_dir, "generate"), "data")
