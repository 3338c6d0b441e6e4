"""The `dsbs` console script as users run it: a subprocess, exit codes, files on disk."""

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ports import free_port

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


@pytest.mark.slow
def test_serve_answers_until_terminated(tiny_student, tmp_path):
    # `dsbs serve` starts its own local Ray, serves until SIGTERM (what `ray job stop` and
    # Kubernetes send), then deletes the app and prints its summary line.
    port = free_port()
    proc = subprocess.Popen(
        [DSBS, "serve", "--model", str(tiny_student), f"serve.port={port}", "serve.num_cpus=0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        request = urllib.request.Request(
            f"{base}/v1/predict",
            data=json.dumps({"inputs": ["What is 2 plus 2?"]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.loads(response.read())["predictions"]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().startswith(f"served {tiny_student} at http://127.0.0.1:{port}"), out
