"""schedule_all_waiting_tasks.py: the scheduling daemon (leave it running, e.g. in screen).

Each pass queues tasks whose dependencies are met, expands loops and conditionals, and retries attempts
whose worker stopped renewing their lease. It prints one line per pass that did something."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./schedule_all_waiting_tasks.py              run until interrupted (Ctrl-C)
  ./schedule_all_waiting_tasks.py --once       one pass, then exit
  ./schedule_all_waiting_tasks.py --metrics-port 9410   with a Prometheus endpoint (docs/metrics.md)"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between passes when idle (default: setting scheduler_interval, 0.25)")
    parser.add_argument("--batch-size", type=int, default=1000, help="tasks promoted per transaction (default 1000)")
    parser.add_argument("--verbose", action="store_true", help="also log idle passes")
    cli.add_metrics_arguments(parser)
    return parser


def schedule(args) -> int:
    from eas_controller.queues import make_queue
    from eas_controller.scheduler import Scheduler
    from eas_controller.scheduler.daemon import SchedulerDaemon

    cli.setup_logging()
    settings = cli.settings_from(args)
    if args.interval is not None:
        if args.interval <= 0:
            raise cli.CommandError("--interval must be positive")
        settings.scheduler_interval = args.interval
    if args.batch_size < 1:
        raise cli.CommandError("--batch-size must be positive")
    engine = cli.connect(settings)
    scheduler = Scheduler(engine, make_queue(settings, engine), settings.max_attempts, batch_size=args.batch_size,
                          retry_backoff_s=settings.retry_backoff_s, max_lost_attempts=settings.max_lost_attempts,
                          lease_seconds=settings.lease_seconds)
    cli.serve_metrics(args, "scheduler", engine, database_counts=True, lease_seconds=settings.lease_seconds)
    return SchedulerDaemon(engine, scheduler, settings.scheduler_interval, verbose=args.verbose).run(once=args.once)


main = cli.command(build_parser, schedule)
