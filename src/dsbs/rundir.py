"""The run directory's layout (local path or s3://), shared by the stages and `dsbs run`.

RUN/generate/manifest.json         which output is current (config hash)
RUN/generate/<hash>/inputs/         the normalised input records, with ids
RUN/generate/<hash>/data/           rationale records (parquet shards)
RUN/generate/<hash>/quarantine/     rows that did not make it, with the reason
RUN/generate/<hash>/stats.json      counts, parse rate, tokens, throughput
RUN/generate/<hash>/manifest.json   counts and the config hash, written last
RUN/train/ ...                      checkpoints, student/ export (training stage)
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
    manifest = read_json(storage.join(generate_root(run_dir), "manifest.json"))
    if manifest is None:
        raise FileNotFoundError(f"{generate_root(run_dir)}: no completed generate output")
    return storage.join(generate_dir(run_dir, manifest["config_hash"]), "data")
