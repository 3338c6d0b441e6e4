"""The exported student: a Hugging Face folder plus a small dsbs file naming task and prefixes.

    student/
      config.json, model.safetensors, generation_config.json   (AutoModelForSeq2SeqLM)
      tokenizer.json, tokenizer_config.json                    (AutoTokenizer)
      dsbs_student.json                                        (StudentInfo; written last)

The export is written file by file through `storage` (local or s3://) with `dsbs_student.json`
last, so a folder without it is an unfinished export and is refused on load.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsbs import storage
from dsbs.model_cache import fetch_folder

log = logging.getLogger(__name__)

STUDENT_FILE = "dsbs_student.json"
LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "


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


def save_student(
    model: Any,
    tokenizer: Any,
    info: StudentInfo,
    uri: str,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Writes the export to `uri` (local or s3://); `state_dict` overrides the model's own.

    Under ZeRO-3 the caller passes the consolidated state dict gathered from all ranks.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        for path in files:
            storage.write_bytes(storage.join(uri, str(path.relative_to(tmp))), path.read_bytes())
    payload = json.dumps(asdict(info), indent=2, sort_keys=True) + "\n"
    storage.write_bytes(storage.join(uri, STUDENT_FILE), payload.encode())
    log.info("exported the student to %s", uri)


def read_student_info(folder: str) -> StudentInfo:
    """The dsbs file of an export (local folder).

    Raises:
        FileNotFoundError: when the folder is not a finished dsbs export.
    """
    path = Path(folder) / STUDENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {STUDENT_FILE}; not a finished dsbs student export")
    return StudentInfo(**json.loads(path.read_text()))


def load_student(
    spec: str, cache_dir: str = "~/.cache/dsbs", dtype: Any = None
) -> tuple[Any, Any, StudentInfo]:
    """Loads an export (local folder or s3:// prefix) as (model, tokenizer, info), in eval mode."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = fetch_folder(spec, cache_dir)
    info = read_student_info(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=dtype)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder), info
