"""Building the student: pretrained weights when given, else a preset architecture from scratch."""

from __future__ import annotations

import logging
from typing import Any

from dsbs.config import StudentConfig
from dsbs.model_cache import fetch_folder
from dsbs.student.presets import build_config

log = logging.getLogger(__name__)
_HF_DEEPSPEED_CONFIG: Any = None


def build_student(
    student: StudentConfig,
    vocab_size: int,
    cache_dir: str | None = None,
    ds_config: dict[str, Any] | None = None,
) -> Any:
    """A fp32 T5ForConditionalGeneration: loaded from `student.model`, else built from the preset.

    Weights are fp32 here whatever the training precision; DeepSpeed casts them for bf16.
    With a ZeRO-3 `ds_config` the model is built (and pretrained weights loaded) under
    DeepSpeed's `zero.Init`: every parameter is partitioned as its layer is created, so a rank
    never holds more than its share plus one layer (11B in fp32 is 44 GB per rank otherwise,
    on every rank of a pod, before DeepSpeed even starts).
    """
    from transformers import AutoModelForSeq2SeqLM, T5ForConditionalGeneration

    zero3 = (ds_config or {}).get("zero_optimization", {}).get("stage") == 3
    if student.model:
        folder = fetch_folder(student.model, cache_dir)
        if zero3:
            from transformers.integrations import HfDeepSpeedConfig

            # transformers builds under zero.Init and loads each shard into the partitions
            # while this object is alive (a weak reference finds it); resizing the embeddings
            # and generation consult it too, so it lives as long as the process trains.
            global _HF_DEEPSPEED_CONFIG
            _HF_DEEPSPEED_CONFIG = HfDeepSpeedConfig(ds_config)
        model = AutoModelForSeq2SeqLM.from_pretrained(folder)
        if model.config.vocab_size < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    log.info(
        "building %s from config (no pretrained weights given): random initialisation",
        student.preset,
    )
    config = build_config(student.preset, vocab_size)
    if zero3:
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = T5ForConditionalGeneration(config)
        with deepspeed.zero.GatheredParameters([model.lm_head.weight], modifier_rank=0):
            init_output_layer(model)
        return model
    model = T5ForConditionalGeneration(config)
    init_output_layer(model)
    return model


def init_output_layer(model: Any) -> None:
    """Draws a from-scratch T5's output layer at std d_model**-0.5 (fan-in, as its other layers).

    transformers draws it at std 1.0 and (v1.1, `scale_decoder_outputs` False) does not scale
    its input, so the first logits have std sqrt(d_model) (11 for the demo's t5-mini) and the
    first loss is about 60 where ln(vocab) is 6; Adam moves a weight by about lr a step, so the
    weights stay too large for most of a short training. Drawn at fan-in, the demo's student
    ended with half the validation label loss (0.27 against 0.53) at the same accuracy
    (BENCHMARKS.md, "Choosing the demo's student"). transformers 5 ties this layer to the
    input embedding, which is drawn so too.
    """
    import torch

    if getattr(model.config, "scale_decoder_outputs", False):
        return  # T5 v1.0: the decoder's output is scaled by d_model**-0.5 already
    with torch.no_grad():
        model.lm_head.weight.normal_(mean=0.0, std=model.config.d_model**-0.5)
