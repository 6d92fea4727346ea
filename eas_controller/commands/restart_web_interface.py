"""restart_web_interface: restart the web console's pods on Kubernetes (rolling, to pick up a new image)."""

from __future__ import annotations

from eas_controller import cli


def build_parser():
    from eas_controller.commands.deploy import add_kubernetes_arguments

    parser = cli.parser(__doc__)
    add_kubernetes_arguments(parser, sizing=False)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: restart(args))


def restart(args) -> int:
    from eas_controller.deployment import kubectl

    try:
        kubectl.require_cluster()
        print(kubectl.rollout_restart(args.namespace, ["deployment/eas-web-interface"]), end="")
    except kubectl.KubectlError as error:
        raise cli.CommandError(str(error)) from None
    return 0
