"""Kubernetes manifests rendered from ``docker/kubernetes/`` and sized from the task-type registry.

Every ``container`` named in the registry becomes one worker Deployment serving exactly the task types
that name it (types without a container run in the base image, deployment ``eas-worker-base``). Its CPU,
memory and GPU requests and limits are the largest of those types' ``resources``, capped at
``--limit-to-system-fraction`` of the system as the seed's deploy.py did; the worker still claims those
types (it declares the registry's needs to the queue), so a scaled-down pod runs them slower rather than
never. No manifest holds a password: pods read them from the Secret that :mod:`kubectl` creates once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from string import Template

import yaml

from eas_controller.registry import TaskType

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "docker", "kubernetes")
SECRET_NAME = "eas-credentials"
BASE_WORKER = "eas-worker-base"
INFRASTRUCTURE = ("namespace", "configmap", "data-volume", "mariadb", "rabbitmq", "scheduler", "web-interface")
# Extra seconds the pod lives past the worker's grace period, for the release transaction and exit.
TERMINATION_MARGIN_S = 15


class ManifestError(ValueError):
    """A registry or option that cannot become a valid manifest (named in the message)."""


@dataclasses.dataclass
class Options:
    namespace: str = "plato"
    image_prefix: str = ""  # e.g. registry.example.org/eas/
    tag: str = "latest"
    base_image: str = "eas-controller"
    replicas: int = 1
    limit_fraction: float | None = 0.25
    system_cpus: float = float(os.cpu_count() or 1)
    system_memory_gb: float = 4.0
    grace_period_s: float = 60.0
    lease_seconds: float = 60.0
    queue: str = "sql"
    data_size: str = "100Gi"
    database_size: str = "20Gi"
    storage_class: str | None = None
    keda: bool = False
    keda_max_replicas: int = 10


@dataclasses.dataclass
class WorkerSpec:
    """One worker Deployment: which image, which task types, how much of the node."""

    name: str
    container: str | None
    image: str
    task_types: list[str]
    cpu: float  # the registry's largest need (what the worker declares)
    memory_gb: float
    gpu: int
    pod_cpu: float = 0.0  # after --limit-to-system-fraction (what Kubernetes reserves)
    pod_memory_gb: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)


def deployment_name(container: str) -> str:
    """A DNS-1123 name for a container reference (``eas_worker_tls``, ``reg.io/eas-worker-tls:v2``...)."""
    base = container.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower().replace("_", "-")).strip("-")
    if not name:
        raise ManifestError("container %r gives no usable Kubernetes name" % container)
    return name[:63].rstrip("-")


def image_for(container: str | None, options: Options) -> str:
    reference = container or options.base_image
    if "/" in reference or ":" in reference:
        return reference  # already a full image reference
    return "%s%s:%s" % (options.image_prefix, reference, options.tag)


def worker_specs(registry: dict[str, TaskType], options: Options, wanted: list[str] | None = None) -> list[WorkerSpec]:
    """One spec per container in ``registry`` (only ``wanted`` ones, by container or deployment name)."""
    groups: dict[str | None, list[TaskType]] = {}
    for task_type in registry.values():
        groups.setdefault(task_type.container, []).append(task_type)
    specs = {}
    for container, types in groups.items():
        name = deployment_name(container) if container else BASE_WORKER
        spec = WorkerSpec(name=name, container=container, image=image_for(container, options),
                          task_types=sorted(t.name for t in types),
                          cpu=max(float(t.cpu) for t in types), memory_gb=max(float(t.memory_gb) for t in types),
                          gpu=max(int(t.gpu) for t in types))
        if name in specs:
            raise ManifestError("containers %r and %r both become deployment %s" % (specs[name].container, container, name))
        _scale(spec, options)
        specs[name] = spec
    if wanted:
        chosen = []
        for item in wanted:
            match = [spec for spec in specs.values() if item in (spec.name, spec.container)]
            if not match:
                raise ManifestError("--worker %s: no task type in the registry names that container (known: %s)"
                                    % (item, ", ".join(sorted(specs))))
            chosen += [spec for spec in match if spec not in chosen]
        return chosen
    return sorted(specs.values(), key=lambda spec: (spec.name != BASE_WORKER, spec.name))


def _scale(spec: WorkerSpec, options: Options) -> None:
    """The seed's rule: never reserve more than ``fraction`` of the system's cores or memory."""
    spec.pod_cpu, spec.pod_memory_gb = max(spec.cpu, 0.1), max(spec.memory_gb, 0.25)
    fraction = options.limit_fraction
    if fraction is None:
        return
    cpu_cap, memory_cap = options.system_cpus * fraction, options.system_memory_gb * fraction
    if spec.pod_cpu > cpu_cap:
        spec.notes.append("limiting worker %s to %.3f cpu cores; request was %.3f" % (spec.name, cpu_cap, spec.pod_cpu))
        spec.pod_cpu = cpu_cap
    if spec.pod_memory_gb > memory_cap:
        spec.notes.append("limiting worker %s to %.3f GB memory; request was %.3f" % (
            spec.name, memory_cap, spec.pod_memory_gb))
        spec.pod_memory_gb = memory_cap


def _cpu_quantity(cpu: float) -> str:
    return "%dm" % max(1, round(cpu * 1000))


def _memory_quantity(memory_gb: float) -> str:
    return "%dMi" % max(1, round(memory_gb * 1024))


def resources(spec: WorkerSpec) -> dict:
    amounts = {"cpu": _cpu_quantity(spec.pod_cpu), "memory": _memory_quantity(spec.pod_memory_gb)}
    if spec.gpu:
        amounts["nvidia.com/gpu"] = str(spec.gpu)  # extended resources: request must equal limit
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _secret_env(name: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}


def connection_env() -> list[dict]:
    return [_secret_env("EAS_DB_URL", "db-url"), _secret_env("EAS_AMQP_URL", "amqp-url")]


def _render(template_name: str, values: dict) -> list[dict]:
    path = os.path.join(TEMPLATE_DIR, template_name + ".yaml")
    with open(path) as handle:
        text = Template(handle.read()).substitute(values)
    return [document for document in yaml.safe_load_all(text) if document]


def _common_values(options: Options) -> dict:
    storage_class = "  storageClassName: %s" % json.dumps(options.storage_class) if options.storage_class else ""
    return dict(namespace=options.namespace, secret=SECRET_NAME, queue=options.queue,
                lease_seconds="%g" % options.lease_seconds, data_size=options.data_size,
                database_size=options.database_size, storage_class=storage_class,
                base_image=image_for(None, options), connection_env=json.dumps(connection_env()))


def worker_manifests(spec: WorkerSpec, options: Options) -> list[dict]:
    args = ["worker", "--name", "$(POD_NAME)", "--task-types", ",".join(spec.task_types),
            "--cpus", "%g" % max(spec.cpu, 0.1), "--memory-gb", "%g" % spec.memory_gb, "--gpus", str(spec.gpu),
            "--grace-period", "%g" % options.grace_period_s]
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}] + connection_env()
    if options.keda:
        env.append(_secret_env("EAS_KEDA_MYSQL_DSN", "keda-mysql-dsn"))
    values = dict(_common_values(options), name=spec.name, container=deployment_name(spec.container or "base"),
                  image=spec.image, replicas=options.replicas,
                  termination_grace=int(options.grace_period_s + TERMINATION_MARGIN_S),
                  worker_args=json.dumps(args), worker_env=json.dumps(env), resources=json.dumps(resources(spec)),
                  heartbeat_max_age=int(max(3 * options.lease_seconds, 120)))
    documents = _render("worker", values)
    if options.keda:
        types = ", ".join("'%s'" % name.replace("'", "''") for name in spec.task_types)
        documents += _render("keda-scaledobject", dict(values, max_replicas=options.keda_max_replicas,
                                                         task_type_list=types))
    return documents


def infrastructure_manifests(options: Options) -> list[dict]:
    values = _common_values(options)
    documents = []
    for name in INFRASTRUCTURE:
        documents += _render(name, values)
    return documents


def check_options(options: Options) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", options.namespace) or len(options.namespace) > 63:
        raise ManifestError("--namespace %r is not a valid Kubernetes name (lower-case letters, digits, '-')"
                            % options.namespace)
    if options.replicas < 0:
        raise ManifestError("--replicas must not be negative")
    if options.limit_fraction is not None and not 0 < options.limit_fraction <= 1:
        raise ManifestError("--limit-to-system-fraction must be in (0, 1]")
    if options.grace_period_s < 0:
        raise ManifestError("--grace-period must not be negative")
    if options.queue not in ("sql", "amqp"):
        raise ManifestError("--queue must be sql or amqp")


def render_all(registry: dict[str, TaskType], options: Options, wanted: list[str] | None = None,
               include_infrastructure: bool = True) -> tuple[list[dict], list[WorkerSpec]]:
    check_options(options)
    specs = worker_specs(registry, options, wanted)
    documents = infrastructure_manifests(options) if include_infrastructure else []
    for spec in specs:
        documents += worker_manifests(spec, options)
    return documents, specs


def to_yaml(documents: list[dict]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
