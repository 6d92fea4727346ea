"""stop.py: remove the workers from Kubernetes now, or stop this machine's local pool (--local).

Kubernetes: each worker pod gets SIGTERM: it stops claiming, lets running tasks finish within its grace
period and releases the rest back to the queue. --all also removes the scheduler, console, broker and
database pods; the data and database volumes are always kept (as the seed kept its input/output volumes)."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./stop.py                          remove every worker Deployment in namespace plato
  ./stop.py --worker eas-worker-tls  only this one
  ./stop.py --all                    everything but the volumes
  ./stop.py --local                  stop the pool started by ./start_workers.py"""


def build_parser():
    from eas_controller.commands.deploy import add_kubernetes_arguments

    parser = cli.parser(__doc__, EPILOG)
    add_kubernetes_arguments(parser, sizing=False)
    parser.add_argument("--worker", action="append", default=None, metavar="NAME", help="only this worker Deployment")
    parser.add_argument("--all", action="store_true", help="also remove scheduler, console, RabbitMQ and MariaDB pods")
    parser.add_argument("--local", action="store_true", help="stop the local worker pool instead (see start_workers.py)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="--local: seconds to wait for each worker before killing it (default: its grace period + 30)")
    return parser


def stop(args) -> int:
    if args.local:
        from eas_controller.deployment import local_pool

        settings = cli.settings_from(args)
        with cli.one_line_errors(local_pool.PoolError):
            report = local_pool.stop_pool(settings.data_dir, timeout=args.timeout)
        for line in report.lines:
            print(line)
        return 0 if not report.killed else 1
    from eas_controller.deployment import kubectl

    with cli.one_line_errors(kubectl.KubectlError):
        kubectl.require_cluster()
        print(kubectl.delete_workers(args.namespace, args.worker), end="")
        if args.all:
            print(kubectl.delete_services(args.namespace), end="")
    return 0


main = cli.command(build_parser, stop)
