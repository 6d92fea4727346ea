"""restart_web_interface: restart the web console's pods on Kubernetes (rolling, to pick up a new image)."""

from __future__ import annotations

from eas_controller import cli


def build_parser():
    from eas_controller.commands.deploy import add_kubernetes_arguments

    parser = cli.parser(__doc__)
    add_kubernetes_arguments(parser, sizing=False)
    return parser


def restart(args) -> int:
    from eas_controller.deployment import kubectl

    with cli.one_line_errors(kubectl.KubectlError):
        kubectl.require_cluster()
        print(kubectl.rollout_restart(args.namespace, ["deployment/eas-web-interface"]), end="")
    return 0


main = cli.command(build_parser, restart)
