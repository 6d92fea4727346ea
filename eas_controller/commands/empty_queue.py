"""empty_queue.py: take queued attempts out of the job queue (SQL or RabbitMQ).

Their tasks go back to 'ready', so the scheduler queues them again on its next pass; stop the scheduler
first if you want the queue to stay empty, or use --hold: the selected tasks that are queued, ready or
waiting are held until you release them with --release (running ones carry on). Idempotent; prints what
it changed."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./empty_queue.py                               everything queued goes back to ready
  ./empty_queue.py --job-name survey --hold      pause one job: its queued and ready tasks are held
  ./empty_queue.py --job-name survey --release   let it run again
  ./empty_queue.py --task-type tls --dry-run     what would be removed"""


def build_parser():
    from eas_controller.recovery import add_selection_arguments

    parser = cli.parser(__doc__, EPILOG)
    add_selection_arguments(parser)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--hold", action="store_true", help="hold the tasks instead of making them ready")
    action.add_argument("--release", action="store_true", help="release held tasks (they become ready)")
    return parser


def empty(args) -> int:
    from eas_controller import recovery
    from eas_controller.queues import make_queue

    settings, engine, selection = cli.open_selection(args)
    prefix = "dry run: would have " if args.dry_run else ""
    if args.release:
        report = recovery.release_held(engine, selection, args.dry_run)
        print("%sreleased %d held task(s) of %s" % (prefix, report["released"], selection.describe()))
        return 0
    queue = make_queue(settings, engine)
    try:
        report = recovery.empty_queue(engine, queue, selection, hold=args.hold, dry_run=args.dry_run)
    finally:
        queue.close()
    print("%sremoved %d queued attempt(s) of %s from the %s queue; %d task(s) %s" % (
        prefix, report["removed"], selection.describe(), queue.name, report["tasks"],
        "held" if args.hold else "back to ready"))
    if args.hold:
        print("%sheld %d ready or waiting task(s) as well; release them with --release" % (prefix, report["held_ready"]))
    elif report["tasks"]:
        print("note: a running scheduler queues ready tasks again; use --hold to keep them out")
    return 0


main = cli.command(build_parser, empty)
