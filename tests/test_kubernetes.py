"""deploy/kubernetes: the kustomize bundle, rendered by the real `kubectl kustomize` and validated.

Built-in kinds are checked against Kubernetes' own OpenAPI-derived JSON schemas (the
kubernetes-validate package, strict: unknown fields are errors); the Prometheus Operator's
ServiceMonitor and PrometheusRule against the typed models of its CRDs
(cloudcoil.models.prometheus-operator, generated from the CRDs' OpenAPI schemas), strict too: a
field the model does not know is dropped by pydantic, so a document must survive the round trip
unchanged. Then the bundle's promises: the PrometheusRule holds exactly the groups of alerts/, the
dashboards ConfigMap holds exactly dashboards/*.json for Grafana's sidecar, the exporter runs
hardened with the probes its web server answers, and each site's ServiceMonitor sets `site` and
selects only its own exporter.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the bundle targets (NetworkPolicy, seccompProfile: GA long before)

import kubernetes_validate  # noqa: E402
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1  # noqa: E402

from exporter import config as exporter_config, web  # noqa: E402

CRD_MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring_v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring_v1.PrometheusRule,
}
SITES = ("stockholm", "goteborg")


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found (it ships in the machine image; tests/run.sh checks)"
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return kustomize(KUBE / "base")


@pytest.fixture(scope="module")
def two_sites() -> list[dict]:
    return kustomize(KUBE / "overlays" / "two-sites")


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def validation_errors(doc: dict) -> list[str]:
    """Why `doc` is not a valid object of its kind ([] if it is)."""
    model = CRD_MODELS.get((doc.get("apiVersion"), doc.get("kind")))
    if model is None:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
        except kubernetes_validate.SchemaNotFoundError as exc:
            return [f"no schema: {exc}"]
        return []
    try:
        parsed = model.model_validate(doc)
    except Exception as exc:  # pydantic.ValidationError lists every field
        return [str(exc)]
    round_trip = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if round_trip != doc:
        return [f"fields unknown to the {doc['kind']} CRD: {_dropped(doc, round_trip)}"]
    return []


def _dropped(original, kept, path="") -> list[str]:
    if isinstance(original, dict) and isinstance(kept, dict):
        out = []
        for key, value in original.items():
            out += [f"{path}.{key}"] if key not in kept else _dropped(value, kept[key], f"{path}.{key}")
        return out
    if isinstance(original, list) and isinstance(kept, list):
        return [p for i, (a, b) in enumerate(zip(original, kept)) for p in _dropped(a, b, f"{path}[{i}]")]
    return [] if original == kept else [path]


# --- schemas --------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", ["base", "two_sites"])
def test_every_object_is_valid_for_its_schema(overlay, request):
    docs = request.getfixturevalue(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds
    problems = {f"{d['kind']}/{d['metadata']['name']}": validation_errors(d) for d in docs}
    assert not {k: v for k, v in problems.items() if v}, problems


def test_the_validators_reject_what_they_should(base):
    deployment = copy.deepcopy(of_kind(base, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/-/ready"
    assert validation_errors(deployment)
    deployment = copy.deepcopy(of_kind(base, "Deployment")[0])
    deployment["spec"]["replicas"] = "one"
    assert validation_errors(deployment)
    monitor = copy.deepcopy(of_kind(base, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "30s"  # the field is `interval`
    assert "scrapeInterval" in " ".join(validation_errors(monitor))
    monitor = copy.deepcopy(of_kind(base, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "half a minute"
    assert validation_errors(monitor)
    rule = copy.deepcopy(of_kind(base, "PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    assert validation_errors(rule)


# --- rules and dashboards: the shipped files, not copies that could drift ------------------------

def _shipped_groups() -> list[dict]:
    groups = []
    for name in ("defender-connectivity-recording.rules.yml", "defender-connectivity.rules.yml"):
        groups += yaml.safe_load((ROOT / "alerts" / name).read_text())["groups"]
    return groups


@pytest.mark.parametrize("overlay", ["base", "two_sites"])
def test_prometheusrule_groups_equal_alerts_dir(overlay, request):
    rules = of_kind(request.getfixturevalue(overlay), "PrometheusRule")
    assert len(rules) == 1, "rules once per cluster, not once per site (alerts would fire twice)"
    assert rules[0]["spec"]["groups"] == _shipped_groups()


@pytest.mark.parametrize("overlay", ["base", "two_sites"])
def test_dashboards_configmap_is_the_shipped_json_for_the_sidecar(overlay, request):
    maps = [m for m in of_kind(request.getfixturevalue(overlay), "ConfigMap")
            if m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(maps) == 1
    shipped = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "dashboards").glob("*.json")}
    assert maps[0]["data"] == shipped
    for text in maps[0]["data"].values():
        json.loads(text)
    assert sum(len(t.encode()) for t in shipped.values()) < 1024 * 1024 - 4096, "ConfigMaps hold at most 1 MiB"


# --- the exporter's Deployment ----------------------------------------------------------------

def test_deployment_runs_hardened_with_probes_and_resources(base):
    deployment = of_kind(base, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == 10100
    assert "--web.listen-address=:10100" in container["args"]
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/-/healthy" and probes["readinessProbe"]["path"] == "/-/ready"
    for probe in probes.values():
        assert probe["port"] == "http"
        assert probe["path"] in web.OPEN_PATHS, "the kubelet sends no credentials: the probe path must stay open"
    service = of_kind(base, "Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("overlay", ["base", "two_sites"])
def test_each_exporter_accepts_its_configmap_and_args(overlay, request, tmp_path):
    """The config file the Deployment mounts, from the ConfigMap it names, passes --config.check."""
    docs = request.getfixturevalue(overlay)
    configs = {m["metadata"]["name"]: m for m in of_kind(docs, "ConfigMap")}
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        volume = next(v for v in pod["volumes"] if v["name"] == "config")
        config_map = configs[volume["configMap"]["name"]]  # kustomize rewrote the name to the hashed one
        arg = next(a for a in container["args"] if a.startswith("--config.file="))
        path = arg.split("=", 1)[1]
        assert path.startswith(mount["mountPath"] + "/")
        key = path[len(mount["mountPath"]) + 1:]
        config_file = tmp_path / deployment["metadata"]["name"] / key
        config_file.parent.mkdir(parents=True)
        config_file.write_text(config_map["data"][key])
        args = [a.replace(path, str(config_file)) for a in container["args"]]
        result = subprocess.run([sys.executable, "-m", "exporter", "--config.check", *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{deployment['metadata']['name']}: {result.stdout}{result.stderr}"


# --- sites ---------------------------------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_two_sites_each_scraped_once_with_its_site_label(two_sites):
    services = of_kind(two_sites, "Service")
    deployments = of_kind(two_sites, "Deployment")
    monitors = of_kind(two_sites, "ServiceMonitor")
    assert len(services) == len(deployments) == len(monitors) == len(SITES)
    seen = set()
    for monitor in monitors:
        spec = monitor["spec"]
        assert spec["targetLabels"] == ["site"]
        (service,) = [s for s in services if _selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
        site = service["metadata"]["labels"]["site"]
        seen.add(site)
        (deployment,) = [d for d in deployments
                         if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert deployment["metadata"]["labels"]["site"] == site
        assert spec["jobLabel"] in service["metadata"]["labels"]
        job = service["metadata"]["labels"][spec["jobLabel"]]
        assert job.startswith("defender-connectivity"), "DefenderExporterDown selects job=~\"defender-connectivity.*\""
        assert spec["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert seen == set(SITES)


def test_two_sites_have_their_own_routes(two_sites):
    configs = {m["metadata"]["labels"].get("site"): yaml.safe_load(m["data"]["config.yml"])
               for m in of_kind(two_sites, "ConfigMap") if "config.yml" in m.get("data", {})}
    assert set(configs) == set(SITES)
    assert configs["stockholm"]["routes"]["system"]["proxy"] != configs["goteborg"]["routes"]["system"]["proxy"]


def test_networkpolicy_admits_prometheus_and_dns_and_selects_the_exporter(two_sites):
    for policy in of_kind(two_sites, "NetworkPolicy"):
        spec = policy["spec"]
        site = policy["metadata"]["labels"]["site"]
        assert spec["podSelector"]["matchLabels"]["site"] == site
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        assert spec["ingress"][0]["ports"][0]["port"] == "http"
        dns = spec["egress"][0]
        assert {p["port"] for p in dns["ports"]} == {53}
        # kustomize must not have narrowed the DNS rule to pods carrying the exporter's labels
        assert all("podSelector" not in peer for peer in dns["to"]), dns
        ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        assert {443, 80} <= ports


def egress_ports_needed(config_text: str) -> set[int]:
    """TCP ports the exporter connects to with this config: each probe's proxy or its target's
    port (direct routes), and the system route's way to CRLs, AIA and OCSP (port 80 or its proxy)."""
    config = exporter_config.parse_config(config_text, "config.yml")
    ports = {job.route.proxy.port if job.route.proxy else job.target.port for job in config.jobs()}
    system = config.routes.get("system")
    ports.add(system.proxy.port if system is not None and system.proxy else 80)
    return ports


def allowed_egress_ports(policy: dict) -> set[int]:
    """Ports the policy lets the pod reach anywhere (rules without `to`), TCP."""
    return {p["port"] for rule in policy["spec"]["egress"] if "to" not in rule
            for p in rule["ports"] if p.get("protocol", "TCP") == "TCP"}


@pytest.mark.parametrize("overlay", ["base", "two_sites"])
def test_networkpolicy_lets_each_exporter_reach_its_routes_and_the_catalogue(overlay, request):
    docs = request.getfixturevalue(overlay)
    configs = {m["metadata"]["labels"]["site"]: m["data"]["config.yml"]
               for m in of_kind(docs, "ConfigMap") if "config.yml" in m.get("data", {})}
    for policy in of_kind(docs, "NetworkPolicy"):
        site = policy["metadata"]["labels"]["site"]
        needed = egress_ports_needed(configs[site])
        assert needed <= allowed_egress_ports(policy), (
            f"{site}: the exporter needs TCP {sorted(needed)}, the NetworkPolicy allows {sorted(allowed_egress_ports(policy))}")


def test_egress_ports_follow_the_routes():
    assert egress_ports_needed("routes: {defender: {proxy: null}, system: {proxy: null}}") == {80, 443}
    proxied = "routes: {defender: {proxy: 'http://p.example:8080'}, system: {proxy: 'http://p.example:3128'}}"
    assert egress_ports_needed(proxied) == {8080, 3128}
