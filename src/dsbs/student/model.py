"""Building the student: pretrained weights when given, else a preset architecture from scratch."""

from __future__ import annotations

import logging
from typing import Any

from dsbs.config import StudentConfig
from dsbs.model_cache import fetch_folder
from dsbs.student.presets import build_config

log = logging.getLogger(__name__)


def build_student(student: StudentConfig, vocab_size: int, cache_dir: str = "~/.cache/dsbs") -> Any:
    """A fp32 T5ForConditionalGeneration: loaded from `student.model`, else built from the preset.

    Weights are fp32 here whatever the training precision; DeepSpeed casts them for bf16.
    """
    from transformers import AutoModelForSeq2SeqLM, T5ForConditionalGeneration

    if student.model:
        model = AutoModelForSeq2SeqLM.from_pretrained(fetch_folder(student.model, cache_dir))
        if model.config.vocab_size < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    log.info(
        "building %s from config (no pretrained weights given): random initialisation",
        student.preset,
    )
    return T5ForConditionalGeneration(build_config(student.preset, vocab_size))
