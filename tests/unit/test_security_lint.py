"""`make lint` refuses the unsafe patterns: the project's own ruff and detect-secrets settings
run on a file that holds each of them (real tools, real config)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

UNSAFE = '''"""Every pattern the security lint must refuse."""
import pickle
import subprocess

import torch
import yaml


def run(text: str, path: str) -> object:
    """Unsafe on purpose."""
    eval(text)
    exec(text)
    pickle.load(open(path, "rb"))
    yaml.load(text)
    torch.load(path)
    subprocess.run(text, shell=True)
    password = "hunter2-but-longer"  # pragma: allowlist secret
    return password
'''

EXPECTED = {
    "S307": "eval",
    "S102": "exec",
    "S301": "pickle",
    "S506": "yaml.load",
    "TID251": "torch.load",
    "S602": "shell=True",
    "S105": "hard-coded password",
}


def test_ruff_with_the_project_config_refuses_each_unsafe_pattern(tmp_path):
    source = tmp_path / "unsafe.py"
    source.write_text(UNSAFE)
    result = subprocess.run(
        [BIN / "ruff", "check", "--config", ROOT / "pyproject.toml", "--no-cache", source],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    missing = {code: what for code, what in EXPECTED.items() if code not in result.stdout}
    assert not missing, result.stdout


def test_detect_secrets_with_the_reviewed_baseline_refuses_a_new_key(tmp_path):
    leaked = tmp_path / "settings.py"
    leaked.write_text('AWS_KEY = "AKIAIOSFODNN7EXAMPLE"\n')  # pragma: allowlist secret
    clean = tmp_path / "clean.py"
    clean.write_text('NAME = "dsbs"\n')
    hook = [BIN / "detect-secrets-hook", "--baseline", ROOT / ".secrets.baseline"]
    refused = subprocess.run([*hook, leaked], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1
    assert "AWS Access Key" in refused.stdout
    accepted = subprocess.run([*hook, clean], capture_output=True, text=True, cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stdout
