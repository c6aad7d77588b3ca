"""deploy/kubernetes/: valid against the Kubernetes schemas (kubernetes-validate ships them, so
this runs offline), and consistent with ``tfprod serve``: its flags, its probe routes, its
drain on SIGTERM, its metrics path, its config formats."""

import pathlib
import re

import kubernetes_validate
import pytest
import typer
import yaml

from tfprod.serve.config import parse_model_server_config, parse_monitoring_config
from tfprod.serve.openapi import OPENAPI_PATH
from tfprod.serve.rest import READY_PATH

ROOT = pathlib.Path(__file__).parents[1]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30.0"  # preStop's sleep action is on by default from 1.30
# Kinds whose schemas are not part of Kubernetes (a CRD, a kustomize file): checked below.
NOT_CORE = {"PodMonitor", "Kustomization"}


def manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(K8S.glob("*.yaml"))}


def by_kind(kind: str) -> dict:
    (found,) = [m for m in manifests().values() if m["kind"] == kind]
    return found


def container() -> dict:
    (c,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def flags() -> dict[str, str]:
    args = container()["args"]
    assert args[0] == "serve"
    return dict(a.split("=", 1) for a in args[1:])


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_each_manifest_is_valid_for_kubernetes(name):
    data = yaml.safe_load((K8S / name).read_text())
    if data["kind"] in NOT_CORE:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(data, KUBERNETES, strict=True)
        return
    kubernetes_validate.validate(data, KUBERNETES, strict=True)


def test_the_validator_rejects_a_broken_deployment():
    """The check above can fail: a misspelt field and a wrong type are both caught."""
    data = by_kind("Deployment")
    data["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError, match="pathh"):
        kubernetes_validate.validate(data, KUBERNETES, strict=True)
    data = by_kind("Deployment")
    data["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, KUBERNETES, strict=True)


def test_the_args_are_flags_of_tfprod_serve():
    import click

    from tfprod.commands import serve

    app = typer.Typer()
    serve.register(app)
    command = typer.main.get_command(app)
    if isinstance(command, click.Group):
        command = command.commands["serve"]
    known = {opt for p in command.params for opt in p.opts + p.secondary_opts}
    given = set(flags())
    assert given <= known, given - known
    assert "--drain_seconds" in given


def test_probes_ports_and_drain_match_the_server():
    c = container()
    f = flags()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(f["--rest_api_port"]), "grpc": int(f["--port"])}
    assert c["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "http"}
    # Liveness must not be readiness: /v1/ready is 503 on purpose while loading and draining.
    assert c["livenessProbe"]["httpGet"] == {"path": OPENAPI_PATH, "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == OPENAPI_PATH
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(f["--drain_seconds"])
    # SIGTERM comes after preStop; the kubelet kills at the grace period: both must fit.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    strategy = by_kind("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_labels_selectors_and_service_ports_agree():
    deployment, service = by_kind("Deployment"), by_kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     by_kind("PodMonitor")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    names = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == names
    hpa = by_kind("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2 and hpa["metrics"][0]["pods"]["metric"]["name"]


def test_the_configmap_holds_configs_tfprod_serve_parses():
    data = by_kind("ConfigMap")["data"]
    f = flags()
    mount = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}["config"]
    assert f["--model_config_file"] == f"{mount}/models.config"
    assert f["--monitoring_config_file"] == f"{mount}/monitoring.config"
    (spec,) = parse_model_server_config(data["models.config"])
    assert spec.name == "digits" and spec.base_path.startswith(
        {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}["models"] + "/")
    monitoring = parse_monitoring_config(data["monitoring.config"])
    annotations = by_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    endpoint = by_kind("PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert monitoring.path == annotations["prometheus.io/path"] == endpoint["path"]
    assert annotations["prometheus.io/port"] == f["--rest_api_port"]
    assert endpoint["port"] == "http"


def test_the_request_log_comes_from_the_postgresql_secret():
    env = {e["name"]: e for e in container()["env"]}
    ref = env["TFPROD_REQUEST_LOG"]["valueFrom"]["secretKeyRef"]
    assert flags()["--request_log"] == "$(TFPROD_REQUEST_LOG)"  # expanded by the kubelet
    secret = by_kind("Secret")
    assert secret["metadata"]["name"] == ref["name"]
    assert secret["stringData"][ref["key"]].startswith("postgresql://")


def test_kustomization_applies_everything_but_the_secret_example():
    listed = set(by_kind("Kustomization")["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - {"postgresql-secret.example.yaml"}


def test_the_dockerfile_runs_tfprod_on_the_manifest_ports():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ENTRYPOINT \[\"tfprod\"\]$", text, re.M)
    assert set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()) == {
        str(p["containerPort"]) for p in container()["ports"]}
    user = re.search(r"^USER (\d+)", text, re.M).group(1)
    ctx = by_kind("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert int(user) == ctx["runAsUser"]
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()
