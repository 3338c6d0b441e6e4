"""Running the project's commands as users do: a subprocess from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
"""The virtual environment's bin folder: `dsbs`, `ray`."""
TINY_CONFIG = "tests/assets/configs/pipeline-tiny.yaml"
"""The smallest whole pipeline (a few synthetic rows, the embedded teacher, t5-tiny)."""


def run_command(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Runs `args` from the repository root, capturing its output; never raises on failure."""
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )
