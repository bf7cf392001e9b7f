"""deploy/k8s as kubectl's kustomize renders it: valid against the Kubernetes schemas and the
operators' CRDs, and shaped as promised (deploy/k8s/README.md). Offline, no cluster, seconds."""

from __future__ import annotations

import json
import re
import tomllib
import urllib.request

import pytest
import yaml
from aiohttp import web

from tests.deploy.conftest import parse_dockerfile
from tests.deploy.k8s_support import (
    BASE,
    CRD_FILES,
    K8S_DIR,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    REPO,
    SCHEMAS,
    SECRET_EXAMPLE,
    builtin_errors,
    container,
    containers,
    crd,
    custom_resource_errors,
    env_of,
    find,
    is_custom,
    load_file,
    pod_specs,
    render,
)
from tests.support.processes import free_port

NAMESPACE = "serving"
OUR_IMAGES = {
    "serving-gateway": "gateway",
    "serving-classifier": "classifier",
    "serving-converter": "converter",
}
MEASURED = json.loads((K8S_DIR / "measured.json").read_text())


def test_base_renders_every_promised_object() -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in render())
    assert kinds == sorted(
        [
            ("Namespace", NAMESPACE),
            ("ConfigMap", "serving-config"),
            ("RabbitmqCluster", "rabbitmq"),
            ("PodDisruptionBudget", "rabbitmq"),
            ("Deployment", "redis"),
            ("Service", "redis"),
            ("PersistentVolumeClaim", "models"),
            ("Job", "convert-model"),
            ("PersistentVolumeClaim", "gateway-data"),
            ("Deployment", "gateway"),
            ("Service", "gateway"),
            ("PodDisruptionBudget", "gateway"),
            ("HorizontalPodAutoscaler", "gateway"),
            ("Deployment", "classifier"),
            ("PodDisruptionBudget", "classifier"),
            ("TriggerAuthentication", "rabbitmq-classify"),
            ("ScaledObject", "classifier"),
        ]
    )
    for m in render():
        if m["kind"] != "Namespace":
            assert m["metadata"]["namespace"] == NAMESPACE, m["metadata"]
        assert m["metadata"]["labels"]["app.kubernetes.io/part-of"] == "serving", m["metadata"]


def _every_manifest() -> list[tuple[str, dict]]:
    out = [(f"base {m['kind']}/{m['metadata']['name']}", m) for m in render(BASE)]
    for overlay in OVERLAYS:
        out += [(f"{overlay.name} {m['kind']}/{m['metadata']['name']}", m) for m in render(overlay)]
    out += [(f"{SECRET_EXAMPLE.name} {m['kind']}", m) for m in load_file(SECRET_EXAMPLE)]
    return out


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_validate_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for where, m in _every_manifest():
        if is_custom(m):
            continue
        assert not builtin_errors(m, version), f"{where} (Kubernetes {version}): {builtin_errors(m, version)}"
        checked += 1
    assert checked >= 15


def test_custom_resources_validate_against_their_crds() -> None:
    seen = set()
    for where, m in _every_manifest():
        if is_custom(m):
            assert not custom_resource_errors(m), f"{where}: {custom_resource_errors(m)}"
            seen.add((m["apiVersion"], m["kind"]))
    assert seen == set(CRD_FILES)


def test_the_validators_catch_mistakes() -> None:
    """Each validator refuses a broken copy: the checks above can fail."""
    manifests = render()
    scaled = find(manifests, "ScaledObject", "classifier")
    scaled["spec"]["minReplicas"] = 1  # the HPA's word, not KEDA's (minReplicaCount)
    assert any("minReplicas" in e for e in custom_resource_errors(scaled))
    scaled = find(render(), "ScaledObject", "classifier")
    scaled["spec"]["maxReplicaCount"] = "twelve"
    assert custom_resource_errors(scaled)
    cluster = find(manifests, "RabbitmqCluster", "rabbitmq")
    cluster["spec"]["replica"] = 3
    assert custom_resource_errors(cluster)
    auth = find(manifests, "TriggerAuthentication", "rabbitmq-classify")
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert custom_resource_errors(auth)

    deployment = find(manifests, "Deployment", "classifier")
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    job = find(manifests, "Job", "convert-model")
    job["spec"]["backoffLimit"] = "two"
    for version in KUBERNETES_VERSIONS:
        assert builtin_errors(deployment, version)
        assert builtin_errors(job, version)


def test_crd_files_name_their_source_and_licence() -> None:
    sources = (SCHEMAS / "SOURCES.md").read_text()
    for name in CRD_FILES.values():
        assert name in sources
        assert crd(name)["kind"] == "CustomResourceDefinition"
    for licence in ("LICENSE.keda", "LICENSE.rabbitmq-cluster-operator"):
        assert licence in sources and (SCHEMAS / licence).stat().st_size > 1000


# --- the promised shape -------------------------------------------------------------------


def test_keda_trigger_watches_the_queue_the_workers_consume() -> None:
    manifests = render()
    scaled = find(manifests, "ScaledObject", "classifier")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "classifier"
    find(manifests, "Deployment", "classifier")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert int(trigger["metadata"]["value"]) >= 1

    worker = container(manifests, "classifier")
    assert "QUEUE_NAME" not in env_of(worker), "QUEUE_NAME comes from the shared ConfigMap only"
    (config_ref,) = [s["configMapRef"]["name"] for s in worker["envFrom"]]
    queue = find(manifests, "ConfigMap", config_ref)["data"]["QUEUE_NAME"]
    assert trigger["metadata"]["queueName"] == queue
    # The gateway publishes to the same queue (same ConfigMap, no override).
    gateway = container(manifests, "gateway")
    assert [s["configMapRef"]["name"] for s in gateway["envFrom"]] == [config_ref]
    assert "QUEUE_NAME" not in env_of(gateway)

    auth = find(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"host"}
    assert "host" not in trigger["metadata"], "the broker address with credentials stays in the Secret"
    # Never to zero: the gateway is ready only while the queue has a consumer.
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]


def test_gateway_probes_point_at_routes_that_exist() -> None:
    from gateway.routes import setup_routes

    app = web.Application()
    setup_routes(app)
    get_routes = {r.resource.canonical for r in app.router.routes() if r.method == "GET"}
    gateway = container(render(), "gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["http"] == int(env_of(gateway)["PORT"]["value"])
    probes = {kind: gateway[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["path"] in get_routes, f"{probe['path']} is not a GET route of gateway/routes.py"
        assert probe["port"] in ports


def test_worker_probes_get_an_answer_from_its_real_metrics_endpoint() -> None:
    from classifier import metrics

    worker = container(render(), "classifier")
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports["metrics"] == int(env_of(worker)["WORKER_METRICS_PORT"]["value"])
    assert env_of(worker)["HOST"]["value"] == "0.0.0.0"  # the probe comes from the kubelet, not localhost
    port = free_port()
    metrics.serve(port, "127.0.0.1")  # the worker's own endpoint (prometheus_client's server thread)
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = worker[kind]["httpGet"]
        assert probe["port"] in ports
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['path']}", timeout=5) as response:
            assert response.status == 200
            assert b"classifier_jobs_total" in response.read()


def test_images_have_fixed_tags_never_latest() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    manifests = render()
    images = [c["image"] for _, spec in pod_specs(manifests) for c in containers(spec)]
    images.append(find(manifests, "RabbitmqCluster", "rabbitmq")["spec"]["image"])
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image} has no tag"
        assert tag != "latest" and re.fullmatch(r"[0-9][\w.-]*", tag), image
    ours = {i.rpartition(":")[0]: i.rpartition(":")[2] for i in images if i.rpartition(":")[0] in OUR_IMAGES}
    assert ours == dict.fromkeys(OUR_IMAGES, version), "our images carry the project's version"


def test_every_container_has_requests_and_limits() -> None:
    for where, spec in pod_specs(render()):
        for c in containers(spec):
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where} {c['name']}: {kind}"


def _mib(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_requests_and_limits_cover_what_was_measured() -> None:
    """deploy/k8s/measured.json is what deploy/k8s/measure.py saw on the real processes."""
    manifests = render()
    for name, measured_name in (("gateway", "gateway"), ("classifier", "worker")):
        resources = container(manifests, name)["resources"]
        peak = max(
            MEASURED[r]["load"][measured_name]["rss_peak_mib"] for r in ("photos_320x240", "photos_36mp")
        )
        median = MEASURED["photos_320x240"]["load"][measured_name]["rss_median_mib"]
        busy = MEASURED["photos_320x240"]["load"][measured_name]["cpu_cores"]
        assert _mib(resources["requests"]["memory"]) >= median, name
        assert _mib(resources["limits"]["memory"]) >= 1.5 * peak, name
        assert _cores(resources["limits"]["cpu"]) >= busy, name


def test_pods_run_as_non_root_with_a_read_only_root_filesystem() -> None:
    manifests = render()
    dockerfile_users = {}
    for image, room in OUR_IMAGES.items():
        runtime = next(s for s in parse_dockerfile(REPO / room / "Dockerfile") if s.name == "runtime")
        dockerfile_users[image] = int(runtime.args("USER")[-1].split(":")[0])
    for where, spec in pod_specs(manifests):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where} {c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{where} {c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{where} {c['name']}"
            image = c["image"].rpartition(":")[0]
            if image in dockerfile_users:  # the uid the image was built for owns its files
                assert pod["runAsUser"] == dockerfile_users[image], f"{where} {c['name']}"


def test_writable_paths_are_volumes() -> None:
    """With a read-only root filesystem, each path a process writes must be a mount."""
    manifests = render()
    writes = {
        ("Deployment/gateway", "gateway"): ["/data", "/tmp"],  # UPLOAD_DIR, FEEDBACK_CSV under /data
        ("Deployment/classifier", "classifier"): ["/tmp"],
        ("Job/convert-model", "converter"): ["/models", "/tmp"],
        ("Deployment/redis", "redis"): ["/data"],
    }
    for where, spec in pod_specs(manifests):
        for c in spec["containers"]:
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for path in writes[(where, c["name"])]:
                assert path in mounts and not mounts[path].get("readOnly"), f"{where}: {path}"
    gateway = env_of(container(manifests, "gateway"))
    for variable in ("UPLOAD_DIR", "FEEDBACK_CSV"):
        assert gateway[variable]["value"].startswith("/data/")


def test_workers_mount_the_jobs_model_read_only() -> None:
    manifests = render()
    job = find(manifests, "Job", "convert-model")["spec"]["template"]["spec"]
    job_claim = next(
        v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v
    )
    converter = job["containers"][0]
    model = env_of(converter)["MODEL"]["value"]
    deployment = find(manifests, "Deployment", "classifier")["spec"]["template"]["spec"]
    volume = next(
        v for v in deployment["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == job_claim
    )
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    for c in containers(deployment):
        mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True and mount["mountPath"] == "/models"
        assert env_of(c)["MODEL_PATH"]["value"] == f"/models/{model}.onnx", c["name"]
    converter_mount = next(m for m in converter["volumeMounts"] if m["mountPath"] == "/models")
    assert not converter_mount.get("readOnly")
    find(manifests, "PersistentVolumeClaim", job_claim)


def test_secrets_are_referenced_never_inlined() -> None:
    manifests = render()
    assert not [m for m in manifests if m["kind"] == "Secret"], "the base ships no Secret"
    text = yaml.safe_dump_all(manifests)
    assert not re.search(r"amqps?://[^\s@]*:[^\s@]*@", text), "credentials in an AMQP URL"
    assert "REPLACE-ME" not in text
    for name in ("gateway", "classifier"):
        env = env_of(container(manifests, name))
        assert env["RABBITMQ_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "rabbitmq-default-user",
            "key": "connection_string",
        }
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "serving-redis"
        # $(REDIS_PASSWORD) expands only if it is declared before REDIS_URL.
        names = [e["name"] for e in container(manifests, name)["env"]]
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
        assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    for where, spec in pod_specs(manifests):
        for c in containers(spec):
            for e in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{where} {c['name']} {e['name']}"
    # The example is a placeholder, and not part of what `kubectl apply -k` sends.
    (example,) = load_file(SECRET_EXAMPLE)
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "serving-redis"
    assert all(v.startswith("REPLACE-ME") for v in example["stringData"].values())
    assert SECRET_EXAMPLE.name not in (BASE / "kustomization.yaml").read_text()


def test_grace_periods_cover_the_measured_drains() -> None:
    from gateway.__main__ import SHUTDOWN_GRACE_S

    manifests = render()
    worker_pod = find(manifests, "Deployment", "classifier")["spec"]["template"]["spec"]
    drains = [MEASURED[r]["drain"] for r in ("photos_320x240", "photos_36mp")]
    for drain in drains:
        assert drain["exit_code"] == 0 and drain["jobs_in_hand_at_sigterm"] >= 1, drain
    assert worker_pod["terminationGracePeriodSeconds"] >= 3 * max(d["drain_s"] for d in drains)

    gateway_pod = find(manifests, "Deployment", "gateway")["spec"]["template"]["spec"]
    gateway = container(manifests, "gateway")
    pause = float(gateway["lifecycle"]["preStop"]["exec"]["command"][-1])
    shutdown = float(env_of(gateway)["REQUEST_TIMEOUT_S"]["value"]) + SHUTDOWN_GRACE_S
    assert gateway_pod["terminationGracePeriodSeconds"] >= pause + shutdown


def test_autoscaled_deployments_leave_replicas_to_their_autoscaler() -> None:
    manifests = render()
    hpa = find(manifests, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] >= 2
    for name in ("gateway", "classifier"):
        assert "replicas" not in find(manifests, "Deployment", name)["spec"], name


def test_selectors_match_the_pods_they_mean() -> None:
    manifests = render()
    pod_labels = [m["spec"]["template"]["metadata"]["labels"] for m in manifests if m["kind"] == "Deployment"]
    # The operator labels RabbitMQ's pods app.kubernetes.io/name=<cluster name>.
    pod_labels += [
        {"app.kubernetes.io/name": m["metadata"]["name"]} for m in manifests if m["kind"] == "RabbitmqCluster"
    ]
    for m in manifests:
        if m["kind"] == "Service":
            selector = m["spec"]["selector"]
        elif m["kind"] in ("PodDisruptionBudget", "Deployment"):
            selector = m["spec"]["selector"]["matchLabels"]
        else:
            continue
        matching = [labels for labels in pod_labels if selector.items() <= labels.items()]
        assert len(matching) == 1, f"{m['kind']}/{m['metadata']['name']} selects {len(matching)} pod kinds"


def test_services_target_named_ports_that_exist() -> None:
    manifests = render()
    for m in manifests:
        if m["kind"] != "Service":
            continue
        deployment = find(manifests, "Deployment", m["spec"]["selector"]["app.kubernetes.io/name"])
        names = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in m["spec"]["ports"]:
            assert port["targetPort"] in names, m["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_change_only_what_they_say(overlay) -> None:
    base = {(m["kind"], m["metadata"]["name"]): m for m in render(BASE)}
    changed = {
        (m["kind"], m["metadata"]["name"])
        for m in render(overlay)
        if base[(m["kind"], m["metadata"]["name"])] != m
    }
    if overlay.name == "single-node":
        assert changed == {("PersistentVolumeClaim", "models"), ("PersistentVolumeClaim", "gateway-data")}
        for m in render(overlay):
            if m["kind"] == "PersistentVolumeClaim":
                assert m["spec"]["accessModes"] == ["ReadWriteOnce"]
