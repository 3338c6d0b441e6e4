"""The `dsbs` console script as users run it: a subprocess, exit codes, files on disk."""

import json
import subprocess
import sys
from pathlib import Path

DSBS = str(Path(sys.executable).with_name("dsbs"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DSBS, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("config", "data"):
        assert command in result.stdout


def test_synth_then_import_paper_then_config_show(tmp_path, assets):
    synth = _run(
        "data",
        "synth",
        "--task",
        "arithmetic",
        "--n",
        "30",
        "--seed",
        "7",
        "--out",
        str(tmp_path / "s.jsonl"),
    )
    assert synth.returncode == 0, synth.stderr
    assert synth.stdout.strip().startswith("synth arithmetic: 30 rows")
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 30

    out = tmp_path / "anli.jsonl"
    imported = _run(
        "data",
        "import-paper",
        "--dataset",
        "anli1",
        "--root",
        str(assets / "paper"),
        "--split",
        "test",
        "--out",
        str(out),
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.count("\n") == 1 and "teacher accuracy 100.0%" in imported.stdout
    assert json.loads(out.read_text().splitlines()[0])["label"] == "entailment"

    config = Path(__file__).resolve().parents[2] / "configs" / "local-demo.yaml"
    shown = _run("config", "show", "--config", str(config), "train.alpha=0.2")
    assert shown.returncode == 0, shown.stderr
    assert "alpha: 0.2" in shown.stdout


def test_bad_input_past_budget_exits_non_zero(tmp_path):
    root = tmp_path / "d" / "svamp"
    (root / "llm").mkdir(parents=True)
    (root / "svamp_test.json").write_text('{"input": "x?", "label": "1"}\n{broken\n')
    (root / "llm" / "test_CoT_0.json").write_text(
        json.dumps(["The answer is 1.", "The answer is 2."])
    )
    result = _run(
        "data",
        "import-paper",
        "--dataset",
        "svamp",
        "--root",
        str(tmp_path / "d"),
        "--split",
        "test",
        "--out",
        str(tmp_path / "o.jsonl"),
    )
    assert result.returncode == 1
    assert "over the 1.0% budget" in result.stderr
    assert "svamp_test.json:2: malformed JSON" in result.stderr
