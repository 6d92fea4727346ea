"""reschedule_all_unfinished_jobs.py: give failed and stalled tasks a new attempt.

Running attempts whose lease expired (their worker died) become 'stalled', as the scheduler does; failed
tasks become ready (one more attempt each); tasks waiting out a retry backoff are retried now; queued or
running tasks left without a live attempt are made ready. Then one scheduling pass queues them.
Idempotent; prints what it changed."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./reschedule_all_unfinished_jobs.py                       every failed or stalled task
  ./reschedule_all_unfinished_jobs.py --job-name survey     one job
  ./reschedule_all_unfinished_jobs.py --dry-run             what would be rescheduled"""


def build_parser():
    from eas_controller.recovery import add_selection_arguments

    parser = cli.parser(__doc__, EPILOG)
    add_selection_arguments(parser)
    parser.add_argument("--no-schedule", action="store_true",
                        help="only make the tasks ready; leave queueing to the scheduler daemon")
    return parser


def reschedule(args) -> int:
    from eas_controller import recovery
    from eas_controller.queues import make_queue

    settings, engine, selection = cli.open_selection(args)
    queue = make_queue(settings, engine)
    try:
        report = recovery.reschedule_unfinished(engine, queue, selection, settings.max_attempts, args.dry_run,
                                                schedule=not args.no_schedule,
                                                max_lost_attempts=settings.max_lost_attempts,
                                                lease_seconds=settings.lease_seconds, say=print)
    finally:
        queue.close()
    prefix = "dry run: would have " if args.dry_run else ""
    print("%sexpired %d lease(s) (every task; %d retried, %d failed for good)" % (
        prefix, report["stalled"], report["stalled_retried"], report["stalled_failed"]))
    print("%smade ready %d failed task(s), %d task(s) waiting out a retry backoff and %d task(s) left without a "
          "live attempt, of %s" % (prefix, report["failed"], report["backoff"], report["orphans"], selection.describe()))
    if report["skipped_control"]:
        print("left %d failed control task(s) alone: they had already expanded their children"
              % report["skipped_control"])
    if not args.dry_run and not args.no_schedule:
        print("queued %d new attempt(s)" % report["promoted"])
    return 0


main = cli.command(build_parser, reschedule)
