"""restart_workers.py: rolling restart of the worker Deployments on Kubernetes (to pick up new images).

The worker manifests are applied again first (so a new --limit-to-system-fraction, registry or tag takes
effect), then each Deployment is restarted pod by pod; each old pod releases its running tasks."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./restart_workers.py                              every worker Deployment in namespace plato
  ./restart_workers.py --limit-to-system-fraction 0.5 --tag v3"""


def build_parser():
    from eas_controller.commands.deploy import add_kubernetes_arguments

    parser = cli.parser(__doc__, EPILOG)
    add_kubernetes_arguments(parser)
    parser.add_argument("--worker", action="append", default=None, metavar="NAME", help="only this worker (repeatable)")
    return parser


def restart(args) -> int:
    from eas_controller.commands.deploy import options_from, registry_from
    from eas_controller.deployment import kubectl
    from eas_controller.deployment.kubernetes import ManifestError, render_all

    settings = cli.settings_from(args)
    with cli.one_line_errors(ManifestError):
        documents, specs = render_all(registry_from(args, settings), options_from(args, settings), args.worker,
                                      include_infrastructure=False)
    with cli.one_line_errors(kubectl.KubectlError):
        kubectl.require_cluster()
        running = kubectl.worker_deployments(args.namespace)
        wanted = {"deployment.apps/%s" % spec.name for spec in specs}
        targets = [name for name in running if name in wanted]
        if not targets:
            raise cli.CommandError("no worker Deployment of these is running in namespace %s (found: %s)"
                                   % (args.namespace, ", ".join(running) or "none"))
        names = {target.split("/", 1)[1] for target in targets}
        print(kubectl.apply([doc for doc in documents if doc["metadata"]["name"] in names]), end="")
        print(kubectl.rollout_restart(args.namespace, targets), end="")
    return 0


main = cli.command(build_parser, restart)
