"""deploy.py --dry-run for a registry with three worker containers: every manifest validates offline against
the Kubernetes schemas (kubernetes-validate), and the workers' resources, Secret references, grace period
and liveness probe are what the registry and the flags say. No cluster: the kubectl scripts say so."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import PROJECT_ROOT
from fault_helpers import cluster_factory, wait_for  # noqa: F401

DOORS = os.path.join(PROJECT_ROOT, "eas_controller", "worker_orchestration")
REGISTRY = textwrap.dedent("""\
    task_types:
      transit_search_tls:
        command: "tls_search --in {inputs[lightcurve]}"
        container: eas_worker_tls
        resources: {cpu: 4, gpu: 0, memory_gb: 16}
      transit_search_bls:
        command: "bls --in {inputs[lightcurve]}"
        container: eas_worker_bls
        resources: {cpu: 1, gpu: 0, memory_gb: 2}
      bls_verify:
        command: "bls_verify"
        container: eas_worker_bls
        resources: {cpu: 2, gpu: 0, memory_gb: 1}
      transit_search_qats:
        python: qats_wrapper.search:run
        container: eas-worker-qats
        resources: {cpu: 2, gpu: 1, memory_gb: 4}
    """)


@pytest.fixture
def rendered(tmp_path, eas_sqlite):
    registry = tmp_path / "types.yaml"
    registry.write_text(REGISTRY)
    result = eas_sqlite.script("worker_orchestration/deploy.py", "--dry-run", "--task-types", str(registry),
                               "--system-cpus", "8", "--system-memory-gb", "32", "--grace-period", "45",
                               "--namespace", "eas-test", "--replicas", "3")
    path = tmp_path / "manifests.yaml"
    path.write_text(result.stdout)
    return path, [doc for doc in yaml.safe_load_all(result.stdout) if doc], result


def workers(documents) -> dict:
    return {doc["metadata"]["name"]: doc for doc in documents
            if doc["kind"] == "Deployment" and doc["metadata"]["labels"].get("eas-role") == "worker"}


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered):
    path, documents, _ = rendered
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kubernetes-validate"), "--strict",
                             "--kubernetes-version", "1.30.0", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(documents)
    kinds = sorted(doc["kind"] for doc in documents)
    for kind in ("Namespace", "ConfigMap", "PersistentVolumeClaim", "StatefulSet", "Service"):
        assert kind in kinds
    assert {doc["metadata"]["namespace"] for doc in documents if doc["kind"] != "Namespace"} == {"eas-test"}


def test_worker_resources_come_from_the_registry_capped_at_the_system_fraction(rendered):
    _, documents, result = rendered
    deployed = workers(documents)
    assert set(deployed) == {"eas-worker-tls", "eas-worker-bls", "eas-worker-qats", "eas-worker-base"}

    def container(name):
        return deployed[name]["spec"]["template"]["spec"]["containers"][0]

    # tls asks for 4 cores and 16 GB; a quarter of 8 cores / 32 GB caps it at 2 cores and 8 GB
    assert container("eas-worker-tls")["resources"] == {
        "requests": {"cpu": "2000m", "memory": "8192Mi"}, "limits": {"cpu": "2000m", "memory": "8192Mi"}}
    assert "limiting worker eas-worker-tls to 2.000 cpu cores; request was 4.000" in result.stderr
    # bls serves two types: the larger need of each resource
    assert container("eas-worker-bls")["resources"]["requests"] == {"cpu": "2000m", "memory": "2048Mi"}
    assert container("eas-worker-qats")["resources"]["limits"] == {"cpu": "2000m", "memory": "4096Mi",
                                                                   "nvidia.com/gpu": "1"}
    args = container("eas-worker-bls")["args"]
    assert args[args.index("--task-types") + 1] == "bls_verify,transit_search_bls"
    assert args[args.index("--name") + 1] == "$(POD_NAME)"
    assert container("eas-worker-tls")["image"] == "eas_worker_tls:latest"
    assert all(doc["spec"]["replicas"] == 3 for doc in deployed.values())


def test_passwords_come_only_from_the_secret_and_the_grace_period_matches(rendered):
    path, documents, _ = rendered
    text = path.read_text()
    assert "password:" not in text.lower().replace("secretkeyref", "") and "Secret" not in [d["kind"] for d in documents]
    assert "mysql+pymysql://" not in text and "amqp://" not in text
    for name, doc in workers(documents).items():
        spec = doc["spec"]["template"]["spec"]
        worker = spec["containers"][0]
        env = {item["name"]: item for item in worker["env"]}
        assert env["EAS_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "eas-credentials", "key": "db-url"}
        assert env["EAS_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "eas-credentials", "key": "amqp-url"}
        grace = float(worker["args"][worker["args"].index("--grace-period") + 1])
        assert grace == 45 and spec["terminationGracePeriodSeconds"] == 60  # the worker releases before SIGKILL
        probe = worker["livenessProbe"]["exec"]["command"]
        assert "worker_alive" in probe[-1] and "$POD_NAME" in probe[-1]
    mariadb = next(doc for doc in documents if doc["kind"] == "StatefulSet")
    env = {item["name"]: item for item in mariadb["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MARIADB_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "eas-credentials"
    assert mariadb["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    data = next(doc for doc in documents if doc["kind"] == "PersistentVolumeClaim")
    assert data["spec"]["accessModes"] == ["ReadWriteMany"]
    scheduler = next(doc for doc in documents if doc["metadata"]["name"] == "eas-scheduler")
    assert scheduler["spec"]["replicas"] == 1


def test_worker_flag_selects_deployments_and_unknown_names_are_one_clear_error(tmp_path, eas_sqlite):
    registry = tmp_path / "types.yaml"
    registry.write_text(REGISTRY)
    result = eas_sqlite.script("worker_orchestration/deploy.py", "--dry-run", "--task-types", str(registry),
                               "--worker", "eas_worker_tls", "--worker", "eas-worker-qats", "--workers-only")
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert names == ["eas-worker-tls", "eas-worker-qats"]
    bad = eas_sqlite.script("worker_orchestration/deploy.py", "--dry-run", "--task-types", str(registry),
                            "--worker", "eas-worker-nope", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --worker eas-worker-nope") and "Traceback" not in bad.stderr


@pytest.mark.parametrize("door", ["deploy.py", "stop.py", "restart_workers.py", "restart_web_interface.sh"])
def test_without_a_cluster_the_kubectl_scripts_say_so_and_fail(door, eas_sqlite, tmp_path):
    env = dict(eas_sqlite.env, KUBECONFIG=str(tmp_path / "no-such-kubeconfig"), PATH=os.environ["PATH"])
    result = subprocess.run([os.path.join(DOORS, door)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and ("no Kubernetes cluster is reachable" in message
                                              or "kubectl is not installed" in message)
    assert "Traceback" not in message


def test_the_liveness_check_reads_the_workers_heartbeat(cluster_factory):  # noqa: F811
    cluster = cluster_factory("sqlite")
    env = cluster.environment.env

    def alive(name):
        return subprocess.run([sys.executable, "-m", "eas_controller", "worker_alive", "--name", name, "--max-age", "30"],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert alive("pod-a").returncode == 1
    worker = cluster.worker(name="pod-a")
    wait_for(lambda: alive("pod-a").returncode == 0, 60, "the worker to register its heartbeat", interval=0.5)
    cluster.stop(worker)
    result = alive("pod-a")
    assert result.returncode == 1 and "has stopped" in result.stdout



def test_keda_scales_each_worker_from_the_queued_attempts_of_its_task_types(tmp_path, eas_sqlite):
    registry = tmp_path / "types.yaml"
    registry.write_text(REGISTRY)
    result = eas_sqlite.script("worker_orchestration/deploy.py", "--dry-run", "--task-types", str(registry), "--keda",
                               "--worker", "eas_worker_bls")
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    scaled = [doc for doc in documents if doc["kind"] == "ScaledObject"]
    assert [doc["spec"]["scaleTargetRef"]["name"] for doc in scaled] == ["eas-worker-bls"]
    trigger = scaled[0]["spec"]["triggers"][0]
    assert trigger["type"] == "mysql" and "a.state = 'queued'" in trigger["metadata"]["query"]
    assert "IN ('bls_verify', 'transit_search_bls')" in trigger["metadata"]["query"]
    worker = workers(documents)["eas-worker-bls"]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in worker["env"]}
    assert env[trigger["metadata"]["connectionStringFromEnv"]]["valueFrom"]["secretKeyRef"]["name"] == "eas-credentials"
