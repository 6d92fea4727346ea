"""cancel_job.py: cancel the unfinished tasks of a job (or of some task types).

Waiting, ready, held and queued tasks are cancelled and leave the queue. Running attempts are cancelled
too: the worker running one notices at its next heartbeat (a third of the lease), stops the task and
discards its results. Finished tasks are left as they are. Idempotent; prints what it changed."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./cancel_job.py --job-name survey
  ./cancel_job.py --job-id 12 --task-type tls --dry-run
  ./cancel_job.py --all                               every unfinished task"""


def build_parser():
    from eas_controller.recovery import add_selection_arguments

    parser = cli.parser(__doc__, EPILOG)
    add_selection_arguments(parser)
    parser.add_argument("--all", action="store_true", help="cancel every unfinished task (no filter needed)")
    return parser


def cancel(args) -> int:
    from eas_controller import recovery
    from eas_controller.queues import make_queue

    selection = recovery.selection_from(args)
    if selection.is_everything and not args.all:
        raise cli.CommandError("name what to cancel (--job-name, --job-id, --task-type), or give --all")
    settings, engine, selection = cli.open_selection(args)
    queue = make_queue(settings, engine)
    try:
        report = recovery.cancel(engine, queue, selection, args.dry_run)
    finally:
        queue.close()
    prefix = "dry run: would have " if args.dry_run else ""
    print("%scancelled %d unfinished task(s) of %s: %d queued attempt(s) taken out of the queue, %d running "
          "attempt(s) told to stop" % (prefix, report["tasks"], selection.describe(), report["queued_removed"],
                                       report["running_stopped"]))
    return 0


main = cli.command(build_parser, cancel)
