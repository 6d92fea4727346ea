"""schedule_all_waiting_tasks.py: the scheduling daemon (leave it running, e.g. in screen).

Each pass queues tasks whose dependencies are met, expands loops and conditionals, and retries attempts
whose worker stopped renewing their lease. It prints one line per pass that did something."""

from __future__ import annotations

import logging
import time

from eas_controller import cli, metrics

EPILOG = """examples:
  ./schedule_all_waiting_tasks.py              run until interrupted (Ctrl-C)
  ./schedule_all_waiting_tasks.py --once       one pass, then exit
  ./schedule_all_waiting_tasks.py --metrics-port 9410   with a Prometheus endpoint (docs/metrics.md)"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between passes when idle (default: setting scheduler_interval, 0.5)")
    parser.add_argument("--batch-size", type=int, default=1000, help="tasks promoted per transaction (default 1000)")
    parser.add_argument("--verbose", action="store_true", help="also log idle passes")
    cli.add_metrics_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: schedule(args))


def schedule(args) -> int:
    from sqlalchemy.exc import DBAPIError

    from eas_controller.database.engine import is_retryable, read_transaction
    from eas_controller.queues import make_queue
    from eas_controller.scheduler import Scheduler
    from eas_controller.worker.resources import describe_unmet, unmet_needs

    cli.setup_logging()
    log = logging.getLogger("eas.scheduler")
    settings = cli.settings_from(args)
    if args.interval is not None:
        if args.interval <= 0:
            raise cli.CommandError("--interval must be positive")
        settings.scheduler_interval = args.interval
    engine = cli.connect(settings)
    queue = make_queue(settings, engine)
    scheduler = Scheduler(engine, queue, settings.max_attempts, batch_size=args.batch_size,
                          retry_backoff_s=settings.retry_backoff_s)
    cli.serve_metrics(args, "scheduler", engine, database_counts=True, lease_seconds=settings.lease_seconds)
    outage = 0
    unmet_checked, unmet_said = 0.0, ("", 0.0)
    while True:
        started = time.time()
        try:
            result = scheduler.run_pass()
            metrics.scheduler_pass(result)
            if result.did_something or args.verbose:
                log.info("pass: %s (%.2f s)", scheduler.status_line(result), time.time() - started)
            elif time.time() - unmet_checked > 30:  # idle: say (once, and every 10 min) what no worker can run
                unmet_checked = time.time()
                with read_transaction(engine) as connection:
                    unmet = describe_unmet(unmet_needs(connection))
                if unmet and (unmet != unmet_said[0] or unmet_checked - unmet_said[1] > 600):
                    log.warning(unmet)
                    unmet_said = (unmet, unmet_checked)
        except DBAPIError as error:  # the daemon rides out a database restart
            if args.once or not is_retryable(error):
                raise
            outage += 1
            delay = min(10.0, 2.0 * outage)
            log.warning("database unavailable (%s); next pass in %.0f s", str(error.orig).splitlines()[0][:200], delay)
            time.sleep(delay)
            continue
        if outage:
            log.info("database reachable again")
            outage = 0
        if args.once:
            return 0
        if not result.did_something:
            time.sleep(settings.scheduler_interval)
