"""The Helm chart: linted, rendered and checked, applied to a real API server, installed, and its
RBAC shown sufficient and least-privilege by the operator running as the chart's ServiceAccount.

The operator's own pod from the chart is only marked Running by kwok (no kubelet, no image), so
the operator runs here as a subprocess with a token of the chart's ServiceAccount instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import cluster
from e2e import objects as reads  # `objects` here renders a chart's manifest
from e2e.controlplane.processes import free_port
from e2e.support import eventually, gb200_pool
from rackscale.cli.main import parser

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "rackscale"
HELM_MODULE = ROOT / "e2e" / "controlplane" / "helm" / "go.mod"
GROUP, VERSION = "rackscale.dev", "v1alpha1"
PAUSE = "registry.k8s.io/pause:3.10"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")

# (API group, resource[/subresource]) -> verbs: exactly what the ClusterRole must grant.
EXPECTED_RBAC: dict[tuple[str, str], set[str]] = {
    ("", "nodes"): {"list", "watch"},
    ("", "pods"): {"list", "watch", "create", "delete", "patch"},
    ("", "services"): {"create", "patch"},
    ("", "events"): {"create"},
    (GROUP, "rackpools"): {"list", "watch"},
    (GROUP, "inferencedeployments"): {"list", "watch"},
    (GROUP, "rackpools/status"): {"patch"},
    (GROUP, "inferencedeployments/status"): {"patch"},
    (GROUP, "inferencedeployments/finalizers"): {"update"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("resource.nvidia.com", "computedomains"): {"list", "watch", "create", "delete"},
    ("inference.networking.k8s.io", "inferencepools"): {
        "list",
        "watch",
        "create",
        "patch",
        "delete",
    },
}
# The Role in the release namespace: leader election's Lease, and nothing else there.
LEASE_RBAC: dict[tuple[str, str], set[str]] = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}
# Resources the operator never touches: every verb on them must be denied (leases too, outside
# the release namespace).
UNTOUCHED = [
    ("", "secrets"),
    ("", "configmaps"),
    ("", "namespaces"),
    ("", "serviceaccounts"),
    ("", "serviceaccounts/token"),
    ("", "pods/exec"),
    ("", "pods/eviction"),
    ("", "pods/status"),
    ("", "nodes/status"),
    ("", "endpoints"),
    ("apps", "deployments"),
    ("coordination.k8s.io", "leases"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("kopf.dev", "clusterkopfpeerings"),
]
CLUSTER_SCOPED = {
    "nodes",
    "nodes/status",
    "namespaces",
    "rackpools",
    "rackpools/status",
    "customresourcedefinitions",
    "clusterroles",
    "clusterrolebindings",
    "clusterkopfpeerings",
}
DENIED_IN_LOG = re.compile(r"\b403\b|forbidden|not enough permissions", re.IGNORECASE)


# ---- helm -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the helm built by e2e/controlplane/build-helm.sh, with its own config and cache."""
    version = next(
        (
            w[1]
            for w in (line.split() for line in HELM_MODULE.read_text().splitlines())
            if len(w) >= 2 and w[0] == "helm.sh/helm/v4"
        ),
        None,
    )
    assert version, f"{HELM_MODULE} requires no helm.sh/helm/v4"
    cache = Path(os.environ.get("RACKSCALE_CACHE") or Path.home() / ".cache" / "rackscale")
    binary = cache / "bin" / f"helm-{version}" / "helm"
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"{binary} is missing: build it with `bash e2e/controlplane/build-helm.sh` "
            "(a few minutes, cached afterwards)",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(binary), *args], check=False, env=env, capture_output=True, text=True, timeout=120
        )
        if check and done.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{done.stderr}{done.stdout}", pytrace=False)
        return done

    return run


def render(helm: Callable[..., Any], *sets: str, namespace: str = "rackscale-system") -> str:
    args = ["template", "rackscale", str(CHART), "--namespace", namespace, "--include-crds"]
    for value in sets:
        args += ["--set", value]
    return str(helm(*args).stdout)


def objects(manifest: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def rendered(helm: Callable[..., Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return objects(render(helm))


def of_kind(rendered: dict[tuple[str, str], dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [body for (k, _), body in rendered.items() if k == kind]


def permissions(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no names, no URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


# ---- rendering --------------------------------------------------------------------------------


def test_lint_strict(helm: Callable[..., Any]) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "--set", "metrics.serviceMonitor.enabled=true")
    helm(
        "lint", "--strict", str(CHART), "--set", "metrics.prometheusRule.enabled=true",
        "--set", "metrics.networkPolicy.enabled=true",
    )  # fmt: skip


def test_optional_prometheus_rule_carries_the_alerts(helm: Callable[..., Any]) -> None:
    assert not of_kind(objects(render(helm)), "PrometheusRule")
    enabled = objects(
        render(
            helm,
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=prom",
            "metrics.prometheusRule.unplacedFor=30m",
        )
    )
    (rule,) = of_kind(enabled, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    [group] = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    shipped = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert set(alerts) == {r["alert"] for r in shipped}
    for r in shipped:  # the same expressions tests/test_alerts.py evaluates
        assert alerts[r["alert"]]["expr"] == r["expr"]
    assert alerts["RackscaleReplicasUnplaced"]["for"] == "30m"
    assert alerts["RackscaleNoReconcilePass"]["for"] == "10m"
    assert "30m" in alerts["RackscaleReplicasUnplaced"]["annotations"]["summary"]


def test_optional_network_policy_opens_only_the_metrics_port(
    helm: Callable[..., Any], rendered: dict[tuple[str, str], Any]
) -> None:
    assert not of_kind(rendered, "NetworkPolicy")
    enabled = objects(
        render(
            helm,
            "metrics.networkPolicy.enabled=true",
            "metrics.networkPolicy.from[0].namespaceSelector.matchLabels.name=monitoring",
        )
    )
    (policy,) = of_kind(enabled, "NetworkPolicy")
    (deployment,) = of_kind(enabled, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [ingress] = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]


def test_one_operator_replaced_by_recreate(rendered: dict[tuple[str, str], Any]) -> None:
    (deployment,) = of_kind(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parser().parse_args(container["args"])  # the args the image's entrypoint gets
    assert args.command == "run"
    assert args.all_namespaces
    assert args.metrics_port == 9090
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert args.readiness == f"http://0.0.0.0:{ports['readiness']}/readyz"
    assert args.pool_grace == 300
    assert ports["metrics"] == 9090


def test_liveness_and_readiness_are_separate_probes(rendered: dict[tuple[str, str], Any]) -> None:
    (deployment,) = of_kind(rendered, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "readiness"}
    requests = container["resources"]["requests"]
    assert {"cpu", "memory", "ephemeral-storage"} <= set(requests)
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["limits"]["ephemeral-storage"]


def test_hardened_security_context(rendered: dict[tuple[str, str], Any]) -> None:
    (deployment,) = of_kind(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_rbac_is_exactly_what_the_operator_calls(rendered: dict[tuple[str, str], Any]) -> None:
    (role,) = of_kind(rendered, "ClusterRole")
    assert permissions(role["rules"]) == EXPECTED_RBAC
    (binding,) = of_kind(rendered, "ClusterRoleBinding")
    (account,) = of_kind(rendered, "ServiceAccount")
    (lease_role,) = of_kind(rendered, "Role")
    assert lease_role["metadata"]["namespace"] == "rackscale-system"
    assert permissions(lease_role["rules"]) == LEASE_RBAC
    (lease_binding,) = of_kind(rendered, "RoleBinding")
    assert lease_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": lease_role["metadata"]["name"],
    }
    assert lease_binding["subjects"] == binding["subjects"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": "rackscale-system",
        }
    ]
    (deployment,) = of_kind(rendered, "Deployment")
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    )


def test_crds_are_the_generated_ones(rendered: dict[tuple[str, str], Any]) -> None:
    expected = {}
    for path in (ROOT / "crds").glob("*.yaml"):
        body = yaml.safe_load(path.read_text())
        expected[body["metadata"]["name"]] = body
    assert {
        d["metadata"]["name"]: d for d in of_kind(rendered, "CustomResourceDefinition")
    } == expected


def test_metrics_service_and_optional_servicemonitor(
    helm: Callable[..., Any], rendered: dict[tuple[str, str], Any]
) -> None:
    (service,) = of_kind(rendered, "Service")
    (deployment,) = of_kind(rendered, "Deployment")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not of_kind(rendered, "ServiceMonitor")

    enabled = objects(
        render(
            helm,
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prom",
        )
    )
    (monitor,) = of_kind(enabled, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )

    off = objects(render(helm, "metrics.enabled=false", "metrics.serviceMonitor.enabled=true"))
    assert not of_kind(off, "Service")
    assert not of_kind(off, "ServiceMonitor")
    (container,) = of_kind(off, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert parser().parse_args(container["args"]).metrics_port == 0


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("replicaCount=0", "/replicaCount"),
        ("leaderElection.leaseDuration=3", "/leaderElection/leaseDuration"),
        ("metrics.port=abc", "/metrics/port"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.logFormat=xml", "/operator/logFormat"),
    ],
)
def test_values_schema_refuses(helm: Callable[..., Any], value: str, why: str) -> None:
    done = helm("template", "rackscale", str(CHART), "--set", value, check=False)
    assert done.returncode != 0
    assert why in done.stderr, done.stderr


def test_one_operator_leads_a_lease_of_the_release_namespace(
    rendered: dict[tuple[str, str], Any],
) -> None:
    (deployment,) = of_kind(rendered, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parser().parse_args(container["args"])
    assert args.leader_election is True
    assert (args.lease_name, args.lease_namespace) == ("rackscale", "rackscale-system")
    assert args.lease_duration == 10
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert not of_kind(rendered, "PodDisruptionBudget")


def test_two_replicas_roll_spread_and_share_one_lease(helm: Callable[..., Any]) -> None:
    two = objects(render(helm, "replicaCount=2", "health.livenessBound=90"))
    (deployment,) = of_kind(two, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = parser().parse_args(container["args"])
    assert args.leader_election is True
    assert args.lease_namespace == "rackscale-system"
    assert args.liveness_bound == 90
    assert {e["name"] for e in container["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    (budget,) = of_kind(two, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (lease_role,) = of_kind(two, "Role")
    assert permissions(lease_role["rules"]) == LEASE_RBAC


def test_several_replicas_need_leader_election(helm: Callable[..., Any]) -> None:
    done = helm(
        "template", "rackscale", str(CHART), "--set", "replicaCount=2",
        "--set", "leaderElection.enabled=false", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled" in done.stderr
    alone = objects(render(helm, "leaderElection.enabled=false"))
    (container,) = of_kind(alone, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert parser().parse_args(container["args"]).leader_election is False
    assert not of_kind(alone, "Role")
    assert not of_kind(alone, "RoleBinding")


# ---- on the API server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl() -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = cluster.binaries()["kubectl"]

    def run(
        *args: str, kubeconfig: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), "--kubeconfig", kubeconfig, *args],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_server_side_dry_run_accepts_every_object(
    helm: Callable[..., Any], kubectl: Callable[..., Any], kubeconfig: str, namespace: str
) -> None:
    kinds: set[str] = set()
    for sets in (("metrics.networkPolicy.enabled=true",), ("replicaCount=2",)):
        manifest = render(helm, *sets, namespace=namespace)
        done = kubectl(
            "apply", "--dry-run=server", "-f", "-", kubeconfig=kubeconfig, stdin=manifest
        )
        assert done.returncode == 0, done.stderr
        applied = [line for line in done.stdout.splitlines() if "(server dry run)" in line]
        assert len(applied) == len(objects(manifest)), done.stdout
        kinds |= {kind for kind, _ in objects(manifest)}
    assert {
        "Deployment", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
        "ServiceAccount", "Service", "NetworkPolicy", "PodDisruptionBudget",
    } <= kinds  # fmt: skip


@pytest.fixture
def release(
    helm: Callable[..., Any], kube: client.ApiClient, kubeconfig: str, namespace: str
) -> Iterator[tuple[str, str]]:
    """The chart installed into the test's namespace as (release, namespace); uninstalled after,
    with its cluster-scoped ClusterRole and ClusterRoleBinding gone (the CRDs stay)."""
    name = f"rs-{uuid.uuid4().hex[:6]}"
    helm("install", name, str(CHART), "--namespace", namespace, "--kubeconfig", kubeconfig)
    yield name, namespace
    helm("uninstall", name, "--namespace", namespace, "--kubeconfig", kubeconfig)
    rbac = client.RbacAuthorizationV1Api(kube)

    def gone() -> bool:
        for read in (rbac.read_cluster_role, rbac.read_cluster_role_binding):
            try:
                read(f"{name}-rackscale")
            except ApiException as err:
                if err.status != 404:
                    raise
            else:
                return False
        return True

    eventually(gone, f"ClusterRole and ClusterRoleBinding {name}-rackscale to be deleted", 30)
    ext = client.ApiextensionsV1Api(kube)
    for crd in ("rackpools.rackscale.dev", "inferencedeployments.rackscale.dev"):
        ext.read_custom_resource_definition(crd)  # uninstall leaves the CRDs


def test_install_creates_the_operator_objects(
    helm: Callable[..., Any], kube: client.ApiClient, kubeconfig: str, release: tuple[str, str]
) -> None:
    name, namespace = release
    status = json.loads(
        helm("status", name, "-n", namespace, "--kubeconfig", kubeconfig, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    full = f"{name}-rackscale"
    deployment = client.AppsV1Api(kube).read_namespaced_deployment(full, namespace)
    spec = reads.deployment_spec(deployment)
    assert spec.replicas == 1
    assert spec.strategy is not None
    assert spec.strategy.type == "Recreate"
    client.CoreV1Api(kube).read_namespaced_service_account(full, namespace)
    service = client.CoreV1Api(kube).read_namespaced_service(f"{full}-metrics", namespace)
    assert (reads.service_spec(service).ports or [])[0].port == 9090
    role = client.RbacAuthorizationV1Api(kube).read_cluster_role(full)
    assert permissions(reads.rules(kube, role)) == EXPECTED_RBAC
    lease_role = client.RbacAuthorizationV1Api(kube).read_namespaced_role(full, namespace)
    assert permissions(reads.rules(kube, lease_role)) == LEASE_RBAC
    ext = client.ApiextensionsV1Api(kube)
    for crd in ("rackpools.rackscale.dev", "inferencedeployments.rackscale.dev"):
        ext.read_custom_resource_definition(crd)


# ---- the RBAC in practice ---------------------------------------------------------------------


def account(release: tuple[str, str]) -> str:
    name, namespace = release
    return f"system:serviceaccount:{namespace}:{name}-rackscale"


def service_account_kubeconfig(
    kubectl: Callable[..., Any], kubeconfig: str, release: tuple[str, str], path: Path
) -> str:
    """A kubeconfig that authenticates with a TokenRequest token of the chart's ServiceAccount."""
    name, namespace = release
    done = kubectl(
        "create",
        "token",
        f"{name}-rackscale",
        "-n",
        namespace,
        "--duration=1h",
        kubeconfig=kubeconfig,
    )
    assert done.returncode == 0, done.stderr
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == current["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [server],
        "users": [{"name": "operator", "user": {"token": done.stdout.strip()}}],
        "contexts": [
            {"name": "operator", "context": {"cluster": server["name"], "user": "operator"}}
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def pool(kube: client.ApiClient, release: tuple[str, str]) -> Iterator[str]:
    """A RackPool over the profile's GB200 racks, after the release, whose install brings the
    CRDs to a cluster that has none yet."""
    with gb200_pool(kube, "chart") as name:
        yield name


@pytest.fixture
def workload(kube: client.ApiClient) -> Iterator[str]:
    """A second namespace for the InferenceDeployment; afterwards its pods are waited out so the
    next test finds the racks free."""
    core = client.CoreV1Api(kube)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    body = {"metadata": {"name": name, "labels": {"rackscale.dev/e2e": "true"}}}
    core.create_namespace(body)  # type: ignore[arg-type]  # a plain manifest
    yield name
    objects_api = client.CustomObjectsApi(kube)
    for item in reads.custom_items(
        objects_api.list_namespaced_custom_object(GROUP, VERSION, name, "inferencedeployments")
    ):
        objects_api.delete_namespaced_custom_object(
            GROUP, VERSION, name, "inferencedeployments", item["metadata"]["name"]
        )
    eventually(
        lambda: not core.list_namespaced_pod(name).items, f"the pods of {name} to be gone", 120
    )
    core.delete_namespace(name, propagation_policy="Background")


@contextlib.contextmanager
def running_operator(
    kube: client.ApiClient,
    kubectl: Callable[..., Any],
    kubeconfig: str,
    release: tuple[str, str],
    workdir: Path,
) -> Iterator[Path]:
    """`python -m rackscale` with the installed Deployment's own arguments (other ports), logged
    in as the chart's ServiceAccount; yields its log file, stops it afterwards."""
    name, namespace = release
    sa_config = service_account_kubeconfig(
        kubectl, kubeconfig, release, workdir / "operator.kubeconfig"
    )
    whoami = kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=sa_config
    )
    assert whoami.stdout == account(release), whoami.stderr

    deployment = client.AppsV1Api(kube).read_namespaced_deployment(f"{name}-rackscale", namespace)
    args = reads.deployment_args(deployment)
    # Two operators on one machine, and the installed pod's ports mean nothing here.
    readiness = f"http://127.0.0.1:{free_port()}/readyz"
    args = [
        f"--liveness=http://127.0.0.1:{free_port()}/healthz"
        if a.startswith("--liveness=")
        else f"--metrics-port={free_port()}"
        if a.startswith("--metrics-port=")
        else f"--readiness={readiness}"
        if a.startswith("--readiness=")
        else a
        for a in args
    ]
    (workdir / "readiness-url").write_text(readiness)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env["KUBECONFIG"] = sa_config
    log = workdir / "operator.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rackscale", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def operator_as_service_account(
    kube: client.ApiClient,
    kubectl: Callable[..., Any],
    kubeconfig: str,
    release: tuple[str, str],
    tmp_path: Path,
) -> Iterator[Path]:
    """The operator running as the chart's ServiceAccount for the length of one test."""
    with running_operator(kube, kubectl, kubeconfig, release, tmp_path) as log:
        yield log


def inference_deployment(name: str, pool: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "parallelism": {"tensor": 8, "pipeline": 1, "data": 1, "expert": 1},
            "gpusPerPod": 4,
            "placement": {"rackPool": pool, "fallback": "Never"},
            "port": 8000,
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "server", "image": PAUSE}],
                }
            },
        },
    }


def test_operator_as_the_service_account_places_without_a_denial(
    kube: client.ApiClient, pool: str, workload: str, operator_as_service_account: Path
) -> None:
    objects_api = client.CustomObjectsApi(kube)
    core = client.CoreV1Api(kube)
    objects_api.create_namespaced_custom_object(
        GROUP, VERSION, workload, "inferencedeployments", inference_deployment("llm", pool, 2)
    )

    def live_pods() -> list[Any]:
        listed = core.list_namespaced_pod(workload, label_selector="rackscale.dev/deployment=llm")
        return [p for p in listed.items if not reads.meta(p).deletion_timestamp]

    def placed(replicas: int) -> dict[str, Any] | None:
        body = reads.custom(
            objects_api.get_namespaced_custom_object(
                GROUP, VERSION, workload, "inferencedeployments", "llm"
            )
        )
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"]["generation"]:
            return None
        if status.get("placedReplicas") != replicas or status.get("mode") != "Rack":
            return None
        pods = live_pods()
        if len(pods) != 2 * replicas or not all(p.spec.node_name for p in pods):
            return None
        return body

    # Pods created (pods: create), status written (inferencedeployments/status: patch).
    eventually(lambda: placed(2), "2 replicas placed, their 4 pods bound and the status written")
    # Ready once a pass completed: the chart's readinessProbe, on its own endpoint.
    url = (operator_as_service_account.parent / "readiness-url").read_text()
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert (answer.status, answer.read()) == (200, b"ok\n")
    # Services created (services: create) and an Event posted (events: create).
    for service in ("llm", "llm-shards"):
        core.read_namespaced_service(service, workload)
    eventually(
        lambda: (
            "Placed"
            in {
                e.reason
                for e in core.list_namespaced_event(
                    workload, field_selector="involvedObject.name=llm"
                ).items
            }
        ),
        "a Placed event on llm",
    )

    # RackPool status written (rackpools/status: patch).
    def pool_status() -> dict[str, Any] | None:
        body = reads.custom(
            objects_api.get_cluster_custom_object(GROUP, VERSION, "rackpools", pool)
        )
        status = body.get("status") or {}
        holding = [
            r
            for r in status.get("rackStatuses") or []
            if f"{workload}/llm" in r.get("deployments", [])
        ]
        return status if status.get("racks") == 4 and holding else None

    status = eventually(pool_status, f"RackPool {pool} status to show {workload}/llm")
    assert status["gpus"]["allocated"] >= 16

    # Scale down: the highest replica's pods are deleted (pods: delete).
    objects_api.patch_namespaced_custom_object(
        GROUP, VERSION, workload, "inferencedeployments", "llm", {"spec": {"replicas": 1}}
    )
    eventually(lambda: placed(1), "scale-down to 1 replica: the other replica's pods deleted")
    assert {p.metadata.labels["rackscale.dev/replica"] for p in live_pods()} == {"0"}

    text = operator_as_service_account.read_text()
    assert "cluster cache loaded" in text, text[-4000:]
    denied = [line for line in text.splitlines() if DENIED_IN_LOG.search(line)]
    assert not denied, "\n".join(denied[:20])


def allowed(
    kube: client.ApiClient, user: str, target: tuple[str, str], verb: str, namespace: str
) -> bool:
    """What the API server's authorizer answers for `user` (a SubjectAccessReview)."""
    group, resource = target
    plural, _, sub = resource.partition("/")
    sa_namespace = user.split(":")[2]
    attributes = {"group": group, "resource": plural, "subresource": sub, "verb": verb}
    if resource not in CLUSTER_SCOPED:
        attributes["namespace"] = namespace
    review = client.AuthorizationV1Api(kube).create_subject_access_review(
        {  # type: ignore[arg-type]  # a plain manifest
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{sa_namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": attributes,
            },
        }
    )
    return review.status is not None and bool(review.status.allowed)


def test_service_account_may_do_nothing_else(
    kube: client.ApiClient,
    kubectl: Callable[..., Any],
    kubeconfig: str,
    release: tuple[str, str],
    workload: str,
) -> None:
    user = account(release)
    for group, resource in [*EXPECTED_RBAC, *UNTOUCHED]:
        granted = EXPECTED_RBAC.get((group, resource), set())
        answers = {verb: allowed(kube, user, (group, resource), verb, workload) for verb in VERBS}
        assert {verb for verb, yes in answers.items() if yes} == granted, (
            f"{group or 'core'}/{resource}"
        )
    # In the release namespace, the Lease of leader election and no more.
    _, home = release
    for target, granted in LEASE_RBAC.items():
        answers = {verb: allowed(kube, user, target, verb, home) for verb in VERBS}
        assert {verb for verb, yes in answers.items() if yes} == granted, target

    def can_i(*args: str) -> str:
        done = kubectl("auth", "can-i", *args, f"--as={user}", kubeconfig=kubeconfig)
        return str(done.stdout.strip())

    assert can_i("delete", "nodes") == "no"
    assert can_i("patch", "nodes") == "no"
    assert can_i("get", "secrets", "-n", workload) == "no"
    assert can_i("list", "secrets", "--all-namespaces") == "no"
    assert can_i("patch", "inferencedeployments.rackscale.dev", "-n", workload) == "no"
    assert can_i("delete", "rackpools.rackscale.dev") == "no"
    assert can_i("create", "clusterrolebindings") == "no"
    assert can_i("create", "pods", "--subresource=exec", "-n", workload) == "no"
    assert can_i("create", "pods", "-n", workload) == "yes"
    assert (
        can_i("patch", "inferencedeployments.rackscale.dev", "--subresource=status", "-n", workload)
        == "yes"
    )
    assert can_i("watch", "nodes") == "yes"


def test_a_missing_permission_shows_in_the_operator_log(
    kube: client.ApiClient,
    kubectl: Callable[..., Any],
    kubeconfig: str,
    release: tuple[str, str],
    tmp_path: Path,
) -> None:
    """The log check above does see denials: without its CRD rule, kopf says so."""
    name, _ = release
    rbac = client.RbacAuthorizationV1Api(kube)
    role = rbac.read_cluster_role(f"{name}-rackscale")
    kept = [
        rule
        for rule in reads.rules(kube, role)
        if "customresourcedefinitions" not in rule.get("resources", [])
    ]
    rbac.patch_cluster_role(f"{name}-rackscale", {"rules": kept})
    crds = ("apiextensions.k8s.io", "customresourcedefinitions")
    eventually(
        lambda: not allowed(kube, account(release), crds, "watch", "default"),
        "the authorizer to see the narrowed ClusterRole",
        30,
    )
    with running_operator(kube, kubectl, kubeconfig, release, tmp_path) as log:
        eventually(
            lambda: any(DENIED_IN_LOG.search(line) for line in log.read_text().splitlines()),
            "the operator to log that it may not watch CustomResourceDefinitions",
            60,
        )


# ---- the chart linter -------------------------------------------------------------------------

KUBE_SCORE_VERSION = "v1.20.0"  # as e2e/controlplane/build-kube-score.sh builds it


def kube_score_findings(manifest: str) -> dict[tuple[str, str], list[str]]:
    """(kind, check id) -> summaries, for every warning or critical finding of kube-score."""
    cache = Path(os.environ.get("RACKSCALE_CACHE") or Path.home() / ".cache" / "rackscale")
    binary = cache / "bin" / f"kube-score-{KUBE_SCORE_VERSION}" / "kube-score"
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"{binary} is missing: build it with `bash e2e/controlplane/build-kube-score.sh` "
            "(`make e2e-binaries` does)",
            pytrace=False,
        )
    done = subprocess.run(
        [str(binary), "score", "-", "--output-format", "json"],
        input=manifest, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout, done.stderr  # exit code 1 means findings; the JSON says which
    found: dict[tuple[str, str], list[str]] = {}
    for obj in json.loads(done.stdout):
        for check in obj["checks"]:
            if not check["skipped"] and check["grade"] < 10:
                key = (obj["type_meta"]["kind"], check["check"]["id"])
                found[key] = [c["summary"] for c in check.get("comments") or []]
    return found


def test_kube_score_finds_only_what_the_readme_keeps_on_purpose(helm: Callable[..., Any]) -> None:
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Linter findings kept on purpose", 1)[1].split("\n## ", 1)[0]
    kept = set(re.findall(r"^\| `([a-z-]+)`", section, re.MULTILINE))
    found = kube_score_findings(render(helm))
    assert {check for _, check in found} == kept, found
    assert {kind for kind, _ in found} == {"Deployment"}
    # With the optional NetworkPolicy the ingress finding goes; the egress one stays, documented.
    with_policy = kube_score_findings(render(helm, "metrics.networkPolicy.enabled=true"))
    assert set(with_policy) <= set(found)
    assert with_policy[("Deployment", "pod-networkpolicy")] == [
        "The pod does not have a matching egress NetworkPolicy"
    ]
    assert "only an egress one remains" in section
