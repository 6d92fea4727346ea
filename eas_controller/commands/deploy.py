"""deploy.py: create or update the Kubernetes deployment (idempotent: kubectl apply).

Namespace, settings ConfigMap, credentials Secret (random passwords, created once, never printed), the
shared data volume (ReadWriteMany), MariaDB (StatefulSet + volume), RabbitMQ, the scheduler, the web
console, and one worker Deployment per container named in the task-type registry, sized from its
resources and capped at --limit-to-system-fraction of the system."""

from __future__ import annotations

import sys

from eas_controller import cli

EPILOG = """examples:
  ./deploy.py --dry-run                          print every manifest, change nothing
  ./deploy.py --worker eas-worker-tls --worker eas-worker-bls --replicas 4
  ./deploy.py --task-types my_types.yaml --image-prefix registry.example.org/plato/ --tag v2
Registry: the files given with --task-types, else those remembered by init_schema.py (plus the shipped types)."""


def add_kubernetes_arguments(parser, sizing: bool = True) -> None:
    parser.add_argument("--namespace", default="plato", help="Kubernetes namespace (default plato)")
    if not sizing:
        return
    parser.add_argument("--task-types", action="append", default=None, metavar="FILE",
                        help="task-type registry file to size workers from (repeatable)")
    parser.add_argument("--limit-to-system-fraction", type=float, default=0.25, dest="limit_fraction",
                        help="never reserve more than this fraction of the system's cores or memory for one worker "
                             "pod, even if its task types ask for more (default 0.25, as the seed)")
    parser.add_argument("--system-cpus", type=float, default=None, help="cores of the system (default: this machine's)")
    parser.add_argument("--system-memory-gb", type=float, default=None,
                        help="memory of the system in GB (default: this machine's)")
    parser.add_argument("--replicas", type=int, default=1, help="pods per worker Deployment (default 1)")
    parser.add_argument("--grace-period", type=float, default=60.0,
                        help="seconds a stopping worker lets running tasks finish before releasing them (default 60); "
                             "terminationGracePeriodSeconds is this plus 15")
    parser.add_argument("--image-prefix", default="", help="prefix of every image, e.g. registry.example.org/plato/")
    parser.add_argument("--tag", default="latest", help="image tag (default latest)")
    parser.add_argument("--queue", choices=("sql", "amqp"), default="sql", help="job queue in the cluster (default sql)")
    parser.add_argument("--storage-class", help="storage class of the shared data volume (must offer ReadWriteMany)")
    parser.add_argument("--data-size", default="100Gi", help="size of the shared data volume (default 100Gi)")
    parser.add_argument("--keda", action="store_true",
                        help="also a KEDA ScaledObject per worker, scaling from its queued attempts (needs KEDA)")


def options_from(args, settings):
    import psutil

    from eas_controller.deployment.kubernetes import Options

    options = Options(namespace=args.namespace, image_prefix=args.image_prefix, tag=args.tag, replicas=args.replicas,
                      limit_fraction=args.limit_fraction, grace_period_s=args.grace_period,
                      lease_seconds=settings.lease_seconds, queue=args.queue, storage_class=args.storage_class,
                      data_size=args.data_size, keda=args.keda,
                      system_memory_gb=psutil.virtual_memory().total / 2**30)
    if args.system_cpus is not None:
        options.system_cpus = args.system_cpus
    if args.system_memory_gb is not None:
        options.system_memory_gb = args.system_memory_gb
    return options


def registry_from(args, settings):
    """The registry to size from: files, not the database, so manifests can be made before it exists.
    Implementations are not imported: they live in the worker images."""
    from eas_controller.registry import read_registries

    files = list(settings.task_type_files) + list(args.task_types or [])
    return read_registries(files, check_imports=False)


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    add_kubernetes_arguments(parser)
    parser.add_argument("--worker", action="append", default=None, metavar="NAME",
                        help="deploy only this worker (container or deployment name; repeatable; default: all)")
    parser.add_argument("--workers-only", action="store_true", help="apply only the worker Deployments")
    parser.add_argument("--dry-run", action="store_true", help="print the YAML; change nothing")
    return parser


def deploy(args) -> int:
    from eas_controller.deployment import kubectl
    from eas_controller.deployment.kubernetes import ManifestError, render_all, to_yaml

    settings = cli.settings_from(args)
    with cli.one_line_errors(ManifestError):
        documents, specs = render_all(registry_from(args, settings), options_from(args, settings), args.worker,
                                      include_infrastructure=not args.workers_only)
    for spec in specs:
        for note in spec.notes:
            print("deploy: %s" % note, file=sys.stderr)
    if args.dry_run:
        print("# Secret %s (passwords) is created by deploy.py on first deployment; it is not shown." % "eas-credentials")
        print(to_yaml(documents), end="")
        return 0
    with cli.one_line_errors(kubectl.KubectlError):
        kubectl.require_cluster()
        namespace_docs = [doc for doc in documents if doc["kind"] == "Namespace"]
        if namespace_docs:
            print(kubectl.apply(namespace_docs), end="")
        if kubectl.ensure_secret(args.namespace):
            print("secret/eas-credentials created (random passwords)")
        print(kubectl.apply([doc for doc in documents if doc["kind"] != "Namespace"]), end="")
    print("deployed %d worker Deployment(s) to namespace %s: %s" % (
        len(specs), args.namespace, ", ".join(spec.name for spec in specs)))
    return 0


main = cli.command(build_parser, deploy)
