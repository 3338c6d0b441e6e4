"""The exported student: a Hugging Face folder plus a small dsbs file naming task and prefixes.

    student/
      config.json, model.safetensors (or model-0000N-of-0000M.safetensors + index),
      generation_config.json                                    (AutoModelForSeq2SeqLM)
      tokenizer.json, tokenizer_config.json                    (AutoTokenizer)
      dsbs_student.json                                        (StudentInfo; written last)

The export is built whole in a folder beside its place and renamed into it (local), or
uploaded file by file with `dsbs_student.json` last (s3://), so a folder without that file is
an unfinished export and is refused on load.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from dsbs import storage
from dsbs.errors import NotFoundError
from dsbs.model_cache import fetch_folder
from dsbs.storage import StorageError

log = logging.getLogger(__name__)

STUDENT_FILE = "dsbs_student.json"
LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "
STALE_AFTER_S = 3600.0
"""Age past which an unfinished export's staging folder is taken as abandoned."""


@dataclass(frozen=True)
class StudentInfo:
    """What a consumer of the export needs beyond the weights."""

    task: str
    """Task name in the registry (its metric scores the labels)."""
    mode: str
    """Training mode the student was trained in."""
    preset: str
    """Architecture preset (or `pretrained`)."""
    max_input_length: int
    """Input tokens the student was trained on; longer inputs are truncated."""
    max_target_length: int
    """Most tokens a label or rationale was trained to."""
    steps: int
    """Optimizer steps trained."""
    version: str
    """A short id of this export (the training config hash)."""
    label_prefix: str = LABEL_PREFIX
    """Prefix of the label task's input."""
    rationale_prefix: str = RATIONALE_PREFIX
    """Prefix of the rationale task's input (empty when no rationale was learned)."""


def gathered_shards(
    model: Any, dtype: Any, max_shard_bytes: int, receive: bool
) -> Iterator[dict[str, Any]]:
    """The model's weights in `dtype`, as state-dict shards of at most `max_shard_bytes`.

    One module at a time: under ZeRO-3 each module's parameters are gathered from all ranks
    (deepspeed.zero.GatheredParameters, public API) and released again, so neither a GPU nor
    the host ever holds more than one shard plus one layer; without ZeRO-3 the gather is a
    no-op. A collective: every rank iterates, only where `receive` are tensors copied and
    shards yielded (the others get none). Tied weights are written once, under their first
    name (`shared.weight` for T5); loading ties them again.
    """
    import deepspeed

    shard: dict[str, Any] = {}
    size = 0
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in params)
        if not params:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if not receive:
                continue
            for name, param in params:
                tensor = param.detach().to(dtype=dtype, device="cpu", copy=True)
                nbytes = tensor.numel() * tensor.element_size()
                if shard and size + nbytes > max_shard_bytes:
                    yield shard
                    shard, size = {}, 0
                shard[f"{prefix}.{name}" if prefix else name] = tensor
                size += nbytes
    if receive and shard:
        yield shard


def save_student(
    model: Any,
    tokenizer: Any,
    info: StudentInfo,
    uri: str,
    shards: Iterable[dict[str, Any]] | None = None,
    dtype: Any = None,
) -> None:
    """Writes the export to `uri` (local or s3://); a failed write leaves no mix behind.

    `shards` (from `gathered_shards`) are written as they come, as size-capped safetensors
    files with Hugging Face's index, so a large model never sits whole in memory; without
    them the model's own weights are saved. `dtype` is what the config records.

    A local export is built in a folder beside `uri` and renamed into place, so a previous
    export there stays whole until the new one is complete. S3 has no rename: the previous
    export's dsbs file is removed first and the new one written last, so a failed upload
    leaves a prefix that loaders refuse, never old and new files served together.

    Raises:
        StorageError: when a write fails (disk full, a file size limit, S3 refusing).
    """
    local = not storage.is_s3(uri)
    beside = Path(uri).parent if local else Path(tempfile.gettempdir())
    beside.mkdir(parents=True, exist_ok=True)
    _remove_stale(beside, Path(uri).name)
    # mkdir, not mkdtemp: the folder keeps the umask's mode when it becomes the export.
    staging = beside / f".{Path(uri).name}.staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        _write_folder(model, tokenizer, staging, shards, dtype)
        payload = json.dumps(asdict(info), indent=2, sort_keys=True) + "\n"
        if local:
            (staging / STUDENT_FILE).write_text(payload)
            _replace_folder(staging, Path(uri))
        else:
            _upload_folder(staging, uri, payload.encode())
    except (OSError, SafetensorError) as err:
        kept = "the previous export there is untouched" if local else "the prefix is refused"
        # A StorageError names the object it failed on already; the others get the export's.
        where = "" if isinstance(err, StorageError) else f"{uri}: "
        raise StorageError(f"{where}the export failed ({err}); {kept}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported the student to %s", uri)


def _remove_stale(beside: Path, name: str) -> None:
    """Removes what an export killed part-way left beside `name` (its staging or old folder).

    Only folders untouched for STALE_AFTER_S: a live export adds a file to its staging folder
    at least once a shard, so another process's export in progress is never taken.
    """
    now = time.time()
    for pattern in (f".{name}.staging-*", f".{name}.old-*"):
        for folder in beside.glob(pattern):
            try:
                if now - folder.stat().st_mtime > STALE_AFTER_S:
                    shutil.rmtree(folder)
                    log.info("removed %s, left by an export that did not finish", folder)
            except OSError:  # gone meanwhile, or not ours to remove: the export goes on
                continue


def _write_folder(
    model: Any,
    tokenizer: Any,
    folder: Path,
    shards: Iterable[dict[str, Any]] | None,
    dtype: Any,
) -> None:
    """The Hugging Face files of the export (everything but the dsbs file) into `folder`."""
    from safetensors.torch import save_file

    if shards is None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return
    weight_map: dict[str, str] = {}
    total = 0
    names = []
    for i, shard in enumerate(shards):
        name = f"part-{i:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        names.append(name)
        for key, tensor in shard.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    final = (
        {names[0]: "model.safetensors"}
        if len(names) == 1
        else {n: f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i, n in enumerate(names)}
    )
    for old, new in final.items():
        (folder / old).rename(folder / new)
    if len(names) > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: final[v] for k, v in sorted(weight_map.items())},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = model.config
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _replace_folder(staging: Path, target: Path) -> None:
    """Puts `staging` in the place of `target` (two renames on one filesystem)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _upload_folder(staging: Path, uri: str, payload: bytes) -> None:
    """Uploads `staging` under `uri`: the old dsbs file first out, stale files out, ours last."""
    marker = storage.join(uri, STUDENT_FILE)
    storage.delete(marker)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    written = set()
    for path in files:
        target = storage.join(uri, str(path.relative_to(staging)))
        storage.upload_file(str(path), target)
        written.add(target)
    for stale in storage.list_files(uri):
        if stale not in written:  # a previous export's extra shards
            storage.delete(stale)
    storage.write_bytes(marker, payload)


def read_student_info(folder: str) -> StudentInfo:
    """The dsbs file of an export (local folder).

    Raises:
        FileNotFoundError: when the folder is not a finished dsbs export.
    """
    path = Path(folder) / STUDENT_FILE
    if not path.is_file():
        raise NotFoundError(f"{folder}: no {STUDENT_FILE}; not a finished dsbs student export")
    return StudentInfo(**json.loads(path.read_text()))


def load_student(
    spec: str, cache_dir: str | None = None, dtype: Any = None
) -> tuple[Any, Any, StudentInfo]:
    """Loads an export (local folder or s3:// prefix) as (model, tokenizer, info), in eval mode."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = fetch_folder(spec, cache_dir)
    info = read_student_info(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=dtype)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder), info
