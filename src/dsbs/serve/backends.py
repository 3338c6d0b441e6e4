"""Decoding backends for the served student: Hugging Face `generate` and CTranslate2.

Both take prefixed inputs (`predict: ...`) and return greedy outputs, so the API above them
does not know which one runs. vLLM no longer runs encoder-decoder models, hence HF by default.

CTranslate2 converts the export once per node (cached beside the other models) and quantizes
at load: int8 on CPU, bfloat16 on GPU. Never float16: T5's activations overflow in it.
bfloat16 only where the GPU computes it natively (`dsbs.precision`), float32 elsewhere; on
CPU the HF backend stays float32, the precision the student was trained in there.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dsbs.config import ServeConfig
from dsbs.model_cache import cache_root, ensure_folder, fetch_folder
from dsbs.precision import native_bf16
from dsbs.student.decode import generate_texts
from dsbs.student.export import StudentInfo, load_student, read_student_info

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the student deployment needs from an engine."""

    info: StudentInfo
    """The export's dsbs file (task, prefixes, trained lengths, version)."""
    num_parameters: int
    """Parameters of the student (for `GET /v1/model`)."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each prefixed input, end-of-sequence included."""
        ...

    def generate(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy outputs, one per prefixed input."""
        ...


class HFBackend:
    """`AutoModelForSeq2SeqLM.generate`: fp32 on CPU, bf16 on a GPU that has it natively."""

    def __init__(self, folder: str, cfg: ServeConfig, cache_dir: str | None) -> None:
        import torch

        use_gpu = cfg.num_gpus > 0
        dtype = torch.bfloat16 if use_gpu and native_bf16(True)[0] else torch.float32
        self.model, self.tokenizer, self.info = load_student(folder, cache_dir, dtype=dtype)
        if use_gpu:
            self.model.to("cuda")
        self.num_parameters = count_parameters(folder)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each prefixed input, end-of-sequence included."""
        return count_tokens(self.tokenizer, texts)

    def generate(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy outputs, one per prefixed input (inputs truncated to the trained length)."""
        return generate_texts(
            self.model, self.tokenizer, texts, self.info.max_input_length, max_new_tokens
        )


class CTranslate2Backend:
    """A CTranslate2 `Translator` on the converted export: int8 on CPU, bfloat16 on GPU."""

    def __init__(self, folder: str, cfg: ServeConfig, cache_dir: str | None) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        use_gpu = cfg.num_gpus > 0
        compute_type = cfg.ctranslate2_compute_type
        self.info = read_student_info(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        converted = convert_to_ctranslate2(folder, cache_dir)
        if compute_type == "auto":
            compute_type = (
                ("bfloat16" if native_bf16(True)[0] else "float32") if use_gpu else "int8"
            )
        self.translator = ctranslate2.Translator(
            str(converted),
            device="cuda" if use_gpu else "cpu",
            compute_type=compute_type,
            intra_threads=cfg.ctranslate2_threads,
        )
        self.num_parameters = count_parameters(folder)
        log.info("ctranslate2 student from %s (%s)", converted, compute_type)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each prefixed input, end-of-sequence included."""
        return count_tokens(self.tokenizer, texts)

    def generate(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy outputs, one per prefixed input (inputs truncated to the trained length)."""
        ids = self.tokenizer(
            list(texts), max_length=self.info.max_input_length, truncation=True
        ).input_ids
        results = self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(row) for row in ids],
            beam_size=1,
            max_decoding_length=max_new_tokens,
            # HF's generate may end at the first step; CTranslate2's default (1) forbids that
            # and would answer differently whenever the student's first token is </s>.
            min_decoding_length=0,
        )
        return [
            str(
                self.tokenizer.decode(
                    self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]),
                    skip_special_tokens=True,
                )
            ).strip()
            for result in results
        ]


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens of each text under `tokenizer`, end-of-sequence included (both backends')."""
    return [len(ids) for ids in tokenizer(list(texts)).input_ids]


def convert_to_ctranslate2(folder: str, cache_dir: str | None = None) -> Path:
    """The export converted to CTranslate2's format (float32 weights), once per node.

    Quantization happens at load (`compute_type`), so one conversion serves CPU and GPU.
    """
    from ctranslate2.converters import TransformersConverter

    info = read_student_info(folder)
    key = hashlib.sha256(f"{Path(folder).resolve()}|{info.version}".encode()).hexdigest()[:16]
    target = cache_root(cache_dir) / "ctranslate2" / key

    class _T5Converter(TransformersConverter):
        def load_model(self, model_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            # transformers 5 ties lm_head for every T5 and says whether decoder outputs are
            # rescaled in `scale_decoder_outputs`; CTranslate2 reads the rescaling from the
            # tie flag, so hand it the flag that means what it expects.
            model.config.tie_word_embeddings = bool(model.config.scale_decoder_outputs)
            return model

    def fill(staging: Path) -> None:
        _T5Converter(folder).convert(str(staging), force=True)

    ensure_folder(target, folder, fill)
    log.info("the export in ctranslate2's format: %s", target)
    return target


def count_parameters(folder: str) -> int:
    """Parameters stored in an export's safetensors files (a tied matrix counted once)."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), framework="np") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not a dict
                shape = tensors.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def load_backend(cfg: ServeConfig, spec: str, cache_dir: str | None = None) -> Backend:
    """The configured backend on the export at `spec` (local folder or s3:// prefix)."""
    return BACKENDS[cfg.backend](fetch_folder(spec, cache_dir), cfg, cache_dir)


BACKENDS: dict[str, Callable[[str, ServeConfig, str | None], Backend]] = {
    "hf": HFBackend,
    "ctranslate2": CTranslate2Backend,
}
