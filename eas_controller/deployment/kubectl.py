"""Driving ``kubectl``: apply manifests, create the Secret once, remove or restart workers.

We fork ``kubectl`` (as the seed did) rather than use a client library: it honours the user's kubeconfig,
contexts and plugins exactly as their own commands do. Without ``kubectl`` or a reachable cluster every
call fails with :class:`KubectlError` saying so plainly.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess

import yaml

from eas_controller.deployment.kubernetes import SECRET_NAME

WORKER_SELECTOR = "eas-role=worker"
SERVICES = ("deployment/eas-web-interface", "deployment/eas-scheduler", "deployment/eas-rabbitmq",
            "statefulset/eas-mariadb", "service/eas-web-interface", "service/eas-rabbitmq", "service/eas-mariadb")


class KubectlError(Exception):
    """kubectl is missing, no cluster answers, or kubectl refused a request."""


def _kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    if shutil.which("kubectl") is None:
        raise KubectlError("kubectl is not installed (or not on PATH): this command needs kubectl and a Kubernetes "
                           "cluster; use --dry-run to print the manifests instead")
    try:
        result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KubectlError("kubectl %s: no answer within %g s" % (" ".join(args[:2]), timeout)) from None
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise KubectlError("kubectl %s failed: %s" % (" ".join(args[:2]), message[-1] if message else "no output"))
    return result


def require_cluster() -> None:
    """Fail clearly, before changing anything, when no cluster answers."""
    result = _kubectl("version", "--request-timeout=15s", "-o", "json", check=False, timeout=30)
    if result.returncode != 0 or '"serverVersion"' not in result.stdout:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise KubectlError("no Kubernetes cluster is reachable with the current kubeconfig (%s)"
                           % (lines[-1] if lines else "kubectl gave no answer"))


def apply(documents: list[dict]) -> str:
    """``kubectl apply`` (idempotent: creates what is missing, updates what changed)."""
    text = yaml.safe_dump_all(documents, sort_keys=False)
    return _kubectl("apply", "-f", "-", stdin=text).stdout


def ensure_secret(namespace: str) -> bool:
    """Create the credentials Secret with fresh random passwords unless it exists; True when created.

    The passwords go straight to the cluster on kubectl's standard input: never printed, never in a file.
    """
    if _kubectl("get", "secret", SECRET_NAME, "-n", namespace, check=False).returncode == 0:
        return False
    database, root, broker = (secrets.token_urlsafe(24) for _ in range(3))
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": SECRET_NAME, "namespace": namespace,
                           "labels": {"app.kubernetes.io/part-of": "eas-controller"}},
              "stringData": {"mariadb-password": database, "mariadb-root-password": root,
                             "rabbitmq-password": broker,
                             "db-url": "mysql+pymysql://eas:%s@eas-mariadb:3306/eas" % database,
                             "amqp-url": "amqp://eas:%s@eas-rabbitmq:5672/%%2F" % broker,
                             "keda-mysql-dsn": "eas:%s@tcp(eas-mariadb:3306)/eas" % database}}
    _kubectl("apply", "-f", "-", stdin=yaml.safe_dump(secret))
    return True


def worker_deployments(namespace: str) -> list[str]:
    out = _kubectl("get", "deployments", "-n", namespace, "-l", WORKER_SELECTOR, "-o", "name").stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def delete_workers(namespace: str, names: list[str] | None = None) -> str:
    """Remove worker Deployments now (each pod gets SIGTERM and its grace period to release its tasks)."""
    _kubectl("delete", "scaledobjects.keda.sh", "-n", namespace, "-l", "app.kubernetes.io/part-of=eas-controller",
             "--ignore-not-found", check=False)
    if names:
        return _kubectl("delete", "-n", namespace, "--ignore-not-found",
                        *["deployment/%s" % name for name in names]).stdout
    return _kubectl("delete", "deployments", "-n", namespace, "-l", WORKER_SELECTOR, "--ignore-not-found").stdout


def delete_services(namespace: str) -> str:
    """Remove the scheduler, console, broker and database pods; volumes (data, database) are kept."""
    return _kubectl("delete", "-n", namespace, "--ignore-not-found", *SERVICES).stdout


def rollout_restart(namespace: str, targets: list[str]) -> str:
    return _kubectl("rollout", "restart", "-n", namespace, *targets).stdout
