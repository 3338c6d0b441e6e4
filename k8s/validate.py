"""Validates rendered manifests offline, KubeRay objects strictly against the CRD schemas.

Also applies the rules the schemas cannot express.

    python k8s/validate.py k8s/overlays/local-cpu [--schemas DIR]

Renders the kustomization with `kubectl kustomize`, then for every ray.io/v1 object does what
the API server does before validating (drops null fields, fills schema defaults), validates it
against the CRD's openAPIV3Schema with unknown fields rejected at every level (the API server
would prune them silently, so a typo like `minReplica` is otherwise lost without a word), and
applies the operator's and the CRDs' own rules. Core objects are left to
`kubernetes-validate --strict`. Exit status 1 lists every problem found.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay"
KINDS = {"RayCluster": "raycluster", "RayJob": "rayjob", "RayService": "rayservice"}
MANAGED_BY = {"ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"}


def kustomize(folder: Path, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` renders."""
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder}: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` at every level.

    Added wherever properties are listed and unknown fields are not explicitly allowed.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _schema(folder: Path, kind: str) -> dict[str, Any]:
    raw = json.loads((folder / f"{KINDS[kind]}.schema.json").read_text(encoding="utf-8"))
    return strict(raw)


def api_server_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """`obj` as the API server stores it: null fields dropped, schema defaults filled in."""
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        out = {}
        for key, value in obj.items():
            sub = props.get(key, {})
            if value is None and not sub.get("nullable"):
                continue
            out[key] = api_server_defaults(value, sub)
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        return out
    if isinstance(obj, list):
        items = schema.get("items", {})
        return [api_server_defaults(value, items) for value in obj]
    return obj


def cluster_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, RayCluster spec) pairs inside a KubeRay object."""
    spec = obj.get("spec", {})
    if obj["kind"] == "RayCluster":
        yield "spec", spec
    elif obj["kind"] == "RayJob" and "rayClusterSpec" in spec:
        yield "spec.rayClusterSpec", spec["rayClusterSpec"]
    elif obj["kind"] == "RayService" and "rayClusterConfig" in spec:
        yield "spec.rayClusterConfig", spec["rayClusterConfig"]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, pod template) pairs: head, every worker group, and a RayJob's submitter."""
    for path, spec in cluster_specs(obj):
        yield f"{path}.headGroupSpec.template", spec.get("headGroupSpec", {}).get("template", {})
        for i, group in enumerate(spec.get("workerGroupSpecs", [])):
            yield f"{path}.workerGroupSpecs[{i}].template", group.get("template", {})
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj.get("spec", {}):
        yield "spec.submitterPodTemplate", obj["spec"]["submitterPodTemplate"]


def rule_problems(obj: dict[str, Any]) -> list[str]:
    """The operator's checks (ray-operator validation.go) and the CRDs' CEL rules, in code."""
    problems: list[str] = []
    spec = obj.get("spec", {})
    for path, cluster in cluster_specs(obj):
        if cluster.get("managedBy") not in (None, *MANAGED_BY):
            problems.append(f"{path}.managedBy: must be one of {sorted(MANAGED_BY)}")
        names = [group.get("groupName") for group in cluster.get("workerGroupSpecs", [])]
        if len(names) != len(set(names)):
            problems.append(f"{path}.workerGroupSpecs: group names repeat: {names}")
        autoscaling = cluster.get("enableInTreeAutoscaling", False)
        for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
            where = f"{path}.workerGroupSpecs[{i}]"
            low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            if low > high:
                problems.append(f"{where}: minReplicas {low} > maxReplicas {high}")
            replicas = group.get("replicas")
            if replicas is not None and not low <= replicas <= high:
                problems.append(f"{where}: replicas {replicas} not within [{low}, {high}]")
            if not group.get("template", {}).get("spec", {}).get("containers"):
                problems.append(f"{where}.template: no containers")
        head = cluster.get("headGroupSpec", {})
        if not head.get("template", {}).get("spec", {}).get("containers"):
            problems.append(f"{path}.headGroupSpec.template: no containers")
        if autoscaling and cluster.get("autoscalerOptions", {}).get("version") == "v2":
            for where, template in pod_templates({"kind": "RayCluster", "spec": cluster}):
                policy = template.get("spec", {}).get("restartPolicy")
                if policy not in (None, "Never"):
                    problems.append(f"{where}: autoscaler v2 needs restartPolicy Never or unset")
        if "gcsFaultToleranceOptions" in cluster:
            annotations = obj.get("metadata", {}).get("annotations", {})
            if "ray.io/ft-enabled" in annotations:
                problems.append(f"{path}: gcsFaultToleranceOptions with ray.io/ft-enabled")
    if obj["kind"] == "RayJob":
        problems += _rayjob_problems(spec)
    if obj["kind"] == "RayService":
        problems += [
            f"spec.serveConfigV2: {p}" for p in serve_config_problems(spec.get("serveConfigV2"))
        ]
    return problems


def _rayjob_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        problems.append("spec.ttlSecondsAfterFinished > 0 needs shutdownAfterJobFinishes: true")
    if spec.get("clusterSelector") and spec.get("rayClusterSpec"):
        problems.append("spec: clusterSelector and rayClusterSpec are exclusive")
    if spec.get("clusterSelector") and spec.get("shutdownAfterJobFinishes"):
        problems.append("spec.shutdownAfterJobFinishes: not with clusterSelector (not its cluster)")
    if not spec.get("clusterSelector") and not spec.get("rayClusterSpec"):
        problems.append("spec: needs rayClusterSpec or clusterSelector")
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        problems.append("spec.activeDeadlineSeconds must be > 0")
    if spec.get("managedBy") not in (None, *MANAGED_BY):
        problems.append(f"spec.managedBy: must be one of {sorted(MANAGED_BY)}")
    if spec.get("submissionMode", "K8sJobMode") != "InteractiveMode" and not spec.get("entrypoint"):
        problems.append("spec.entrypoint: required unless submissionMode is InteractiveMode")
    deletion = spec.get("deletionStrategy")
    if deletion is not None:
        legacy = "onSuccess" in deletion or "onFailure" in deletion
        if legacy and "deletionRules" in deletion:
            problems.append("spec.deletionStrategy: onSuccess/onFailure with deletionRules")
        both = "onSuccess" in deletion and "onFailure" in deletion
        if not (both or "deletionRules" in deletion):
            problems.append("spec.deletionStrategy: both onSuccess and onFailure, or deletionRules")
        for i, rule in enumerate(deletion.get("deletionRules", [])):
            condition = rule.get("condition", {})
            has_job, has_deploy = "jobStatus" in condition, "jobDeploymentStatus" in condition
            if has_job == has_deploy:
                problems.append(
                    f"spec.deletionStrategy.deletionRules[{i}].condition: exactly one of "
                    "jobStatus and jobDeploymentStatus"
                )
    return problems


def serve_config_problems(text: str | None) -> list[str]:
    """`serveConfigV2` checked by Ray's own ServeDeploySchema (the schemas see a plain string)."""
    if text is None:
        return ["missing"]
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:  # pragma: no cover - the project's environment has Ray
        return ["ray is not installed: cannot check it"]
    try:
        ServeDeploySchema.model_validate(yaml.safe_load(text))
    except Exception as err:
        return [str(err).splitlines()[0] + f" ({type(err).__name__})"]
    return []


def validate_object(obj: dict[str, Any], schemas: Path) -> list[str]:
    """Problems with one KubeRay object (empty when it is valid)."""
    import jsonschema

    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") != "ray.io/v1":
        return [f"{name}: apiVersion {obj.get('apiVersion')!r}, expected ray.io/v1"]
    schema = _schema(schemas, obj["kind"])
    stored = api_server_defaults(obj, schema)
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{name}: {'.'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}"
        for err in validator.iter_errors(stored)
    ]
    problems += [f"{name}: {p}" for p in rule_problems(stored)]
    return problems


def validate_folder(folder: Path, schemas: Path, kubectl: str = "kubectl") -> list[str]:
    """Problems with every KubeRay object a kustomization renders."""
    problems = []
    for obj in kustomize(folder, kubectl):
        if obj.get("kind") in KINDS:
            problems += validate_object(obj, schemas)
    return problems


def main() -> int:
    """Validates each folder given; prints the problems."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="kustomization folders")
    parser.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS)
    parser.add_argument("--kubectl", default="kubectl")
    args = parser.parse_args()
    problems = []
    for folder in args.folders:
        problems += [f"{folder}: {p}" for p in validate_folder(folder, args.schemas, args.kubectl)]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(args.folders)} kustomizations, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
