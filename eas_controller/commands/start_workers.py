"""start_workers.py: start a pool of N background workers on this machine, with log files and a pid file
under <data dir>/pool/. Stop them gracefully with ./stop.py --local."""

from __future__ import annotations

import os

from eas_controller import cli

EPILOG = """examples:
  ./start_workers.py --count 4
  ./start_workers.py --count 2 --task-types synthesise_lightcurve --concurrency 2
  ./stop.py --local                           SIGTERM, wait, report"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--count", type=int, required=True, help="workers to start")
    parser.add_argument("--task-types", help="comma-separated task types they run (default: all)")
    parser.add_argument("--concurrency", type=int, default=None, help="tasks at once per worker")
    parser.add_argument("--cpus", type=float, default=None, help="cpus each worker offers (default: cores / count)")
    parser.add_argument("--memory-gb", type=float, default=None, help="memory each worker offers")
    parser.add_argument("--grace-period", type=float, default=30.0,
                        help="seconds running tasks get to finish when the pool is stopped (default 30)")
    parser.add_argument("--name-prefix", help="worker names: PREFIX-0, PREFIX-1... (default <host>-pool)")
    return parser


def start(args) -> int:
    from eas_controller.deployment import local_pool

    settings = cli.settings_from(args)
    cli.connect(settings)  # fail here, clearly, rather than in N log files
    cpus = args.cpus if args.cpus is not None else max(1.0, float(os.cpu_count() or 1) / max(args.count, 1))
    worker_args = ["--cpus", "%g" % cpus]
    for flag, value in (("--task-types", args.task_types), ("--concurrency", args.concurrency),
                        ("--memory-gb", args.memory_gb)):
        if value is not None:
            worker_args += [flag, str(value)]
    env = dict(os.environ, EAS_DATA_DIR=settings.data_dir, EAS_DB_URL=settings.database_url)
    if settings.settings_path:
        env["EAS_CONFIG"] = settings.settings_path
    with cli.one_line_errors(local_pool.PoolError):
        members = local_pool.start_pool(settings.data_dir, args.count, worker_args, args.grace_period, env=env,
                                        prefix=args.name_prefix)
    for member in members:
        print("started worker %s (pid %d), log %s" % (member.name, member.pid, member.log))
    print("pid file: %s; stop with ./stop.py --local" % local_pool.pid_file(settings.data_dir))
    return 0


main = cli.command(build_parser, start)
