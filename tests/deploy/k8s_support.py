"""Helpers of the Kubernetes tests: render deploy/k8s with kubectl's kustomize, validate
built-in kinds with kubernetes-validate and custom resources against their CRDs' schemas.

Everything works offline and without a cluster: `kubectl kustomize` only reads files,
kubernetes-validate ships the Kubernetes schemas, and the CRDs are in deploy/k8s/schemas.
Where kubectl is missing the tests fail, they never skip (scripts/ensure_system_packages.sh
installs Debian's kubernetes-client).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "k8s"
BASE = K8S_DIR / "base"
OVERLAYS = sorted(p.parent for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))
SCHEMAS = K8S_DIR / "schemas"
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"
# The oldest Kubernetes the manifests claim (autoscaling/v2, policy/v1, batch ttl, ...) and the
# newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# apiVersion/kind of each custom resource -> the CRD file that defines it.
CRD_FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmq.com_rabbitmqclusters.yaml",
}

Manifest = dict[str, Any]


@cache
def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl is not installed (it renders the kustomization offline): "
            "scripts/ensure_system_packages.sh installs Debian's kubernetes-client",
            pytrace=False,
        )
    return found


@cache
def _render(directory: Path) -> tuple[Manifest, ...]:
    # No cluster is contacted: an empty KUBECONFIG makes sure of it.
    env = {**os.environ, "KUBECONFIG": os.devnull}
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(directory: Path = BASE) -> list[Manifest]:
    """The kustomization as kubectl renders it; a fresh copy each call (tests may mutate it)."""
    return copy.deepcopy(list(_render(directory)))


def load_file(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(kind/name, pod spec) of every workload we define (the operator shapes RabbitMQ's pods)."""
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"]


def containers(pod_spec: Manifest) -> list[Manifest]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def container(manifests: list[Manifest], deployment: str, name: str | None = None) -> Manifest:
    spec = find(manifests, "Deployment", deployment)["spec"]["template"]["spec"]
    name = name or deployment
    return next(c for c in spec["containers"] if c["name"] == name)


def env_of(c: Manifest) -> dict[str, Manifest]:
    """name -> the env entry (with `value` or `valueFrom`)."""
    return {e["name"]: e for e in c.get("env", [])}


# --- custom resources against their CRDs --------------------------------------------------


@cache
def crd(file_name: str) -> Manifest:
    """One CRD file of deploy/k8s/schemas, parsed (libyaml's parser: the files are large)."""
    return yaml.load((SCHEMAS / file_name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@cache
def crd_schema(api_version: str, kind: str) -> Manifest:
    """The openAPIV3Schema of the served version, closed against unknown fields.

    The API server prunes (or, with strict field validation, refuses) fields a structural
    schema does not declare; jsonschema would let them through, so every object that lists its
    properties and does not opt out (x-kubernetes-preserve-unknown-fields) gets
    additionalProperties: false. A misspelt field then fails here as it would there.
    """
    definition = crd(CRD_FILES[(api_version, kind)])
    group, version = api_version.split("/")
    assert definition["spec"]["group"] == group and definition["spec"]["names"]["kind"] == kind
    served = [v for v in definition["spec"]["versions"] if v["name"] == version and v.get("served")]
    assert served, f"{CRD_FILES[(api_version, kind)]} does not serve {api_version}"
    return _closed(copy.deepcopy(served[0]["schema"]["openAPIV3Schema"]))


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("properties", "patternProperties"):
                for sub in value.values():
                    _closed(sub)
            elif isinstance(value, (dict, list)):
                _closed(value)
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for item in schema:
            _closed(item)
    return schema


def custom_resource_errors(manifest: Manifest) -> list[str]:
    """What the CRD's schema finds wrong with MANIFEST (CEL rules are not evaluated)."""
    schema = crd_schema(manifest["apiVersion"], manifest["kind"])
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def is_custom(manifest: Manifest) -> bool:
    return (manifest["apiVersion"], manifest["kind"]) in CRD_FILES


def builtin_errors(manifest: Manifest, version: str) -> list[str]:
    """What kubernetes-validate (strict: unknown fields are errors) finds wrong with MANIFEST."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    return []
