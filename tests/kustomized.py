"""The rendered k8s/ overlays and the Dockerfiles' build args, for the k8s and image tests.

k8s/ is a folder of scripts, not a package: its `render` and `validate` are imported from
there (tests/ is on sys.path via its conftest).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KUBECTL = str(Path(sys.executable).parent / "kubectl")
SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
OVERLAYS = ("local-cpu", "gpu")
sys.path.insert(0, str(REPO / "k8s"))

import render  # noqa: E402
import validate  # noqa: E402

__all__ = ["render", "validate"]


def rendered_overlays() -> dict[str, list[dict[str, Any]]]:
    """Every overlay as `kubectl kustomize` renders it, by overlay name."""
    return {
        overlay: validate.kustomize(REPO / "k8s" / "overlays" / overlay, KUBECTL)
        for overlay in OVERLAYS
    }


def dockerfile_args(name: str) -> dict[str, str]:
    """A Dockerfile's `ARG NAME=default` lines (docker/NAME)."""
    text = (REPO / "docker" / name).read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, flags=re.MULTILINE))
