"""worker_alive: exit 0 if the named worker renewed its heartbeat recently, 1 if not (a liveness probe).

Read-only. An unreachable database counts as alive: the worker is waiting for it, and restarting the pod
would not help."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """example (Kubernetes exec probe):
  python -m eas_controller worker_alive --name "$POD_NAME" --max-age 180"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--name", required=True, help="the worker's --name")
    parser.add_argument("--max-age", type=float, default=180.0, help="longest acceptable heartbeat age in s (default 180)")
    return parser


def check(args) -> int:
    from eas_controller.database.engine import make_engine
    from eas_controller.deployment.heartbeat import judge

    if args.max_age <= 0:
        raise cli.CommandError("--max-age must be positive")
    settings = cli.settings_from(args)
    engine = make_engine(settings.database_url)
    try:
        verdict = judge(engine, args.name, args.max_age)
    finally:
        engine.dispose()
    print(("alive: " if verdict.alive else "not alive: ") + verdict.reason)
    return 0 if verdict.alive else 1


main = cli.command(build_parser, check)
