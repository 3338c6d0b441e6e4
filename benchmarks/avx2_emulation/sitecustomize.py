"""Make torch (and vLLM, which asks torch) believe this CPU has AVX2 but no AVX-512 or AMX.

Put on PYTHONPATH by `benchmarks/cpu_isa.py` for every process of a run (Ray workers and
vLLM's engine process inherit it). vLLM picks its kernel library (`_C`, `_C_AVX512` or
`_C_AVX2`) and its attention kernel from `torch.cpu._is_*_supported()`, which read the
hardware; this answers for an AVX2-only CPU instead. torch's own kernels, MKL and oneDNN are
held to AVX2 by environment variables set beside it (`cpu_isa.AVX2_ENV`). Not for production.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_HIDDEN = (
    "_is_avx512_supported",
    "_is_avx512_bf16_supported",
    "_is_vnni_supported",
    "_is_amx_tile_supported",
    "_is_amx_fp16_supported",
)


def _no() -> bool:
    return False


def _hide(module: ModuleType) -> None:
    for name in _HIDDEN:
        if hasattr(module, name):
            setattr(module, name, _no)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _hide(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches `torch.cpu` right after it is first imported, so `import torch` stays lazy."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch.cpu":
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


sys.meta_path.insert(0, _Finder())
