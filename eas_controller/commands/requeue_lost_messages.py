"""requeue_lost_messages.py: put back queued attempts that their queue lost.

SQL is the truth: an attempt 'queued' in the database must have an entry in its queue. With RabbitMQ this
drains the task types' queues, re-publishes queued attempts that had no message (lost by the broker, or
a publish that never got confirmed), drops messages whose attempt is not queued any more and puts the
rest back. With the SQL queue it restores missing queue rows. Idempotent; prints what it changed.
Messages a worker is holding at that moment are not seen: re-publishing them makes a harmless duplicate
(the second delivery is dropped), never a loss."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./requeue_lost_messages.py                         every task type
  ./requeue_lost_messages.py --task-type tls --dry-run
  ./requeue_lost_messages.py --min-age 0             include attempts queued just now"""


def build_parser():
    from eas_controller.recovery import add_selection_arguments

    parser = cli.parser(__doc__, EPILOG)
    add_selection_arguments(parser)
    parser.add_argument("--min-age", type=float, default=30.0, metavar="SECONDS",
                        help="leave attempts queued less than this long ago alone (default 30: their message "
                             "may be on its way)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.min_age < 0:
        raise SystemExit("error: --min-age must not be negative")
    return cli.run(lambda: requeue(args))


def requeue(args) -> int:
    from eas_controller import recovery
    from eas_controller.queues import make_queue
    from eas_controller.queues.amqp import BrokerError

    settings, engine, selection = cli.open_selection(args)
    queue = make_queue(settings, engine)
    try:
        report = recovery.requeue_lost(engine, queue, selection, args.min_age, args.dry_run)
    except BrokerError as error:
        raise cli.CommandError(str(error)) from None
    finally:
        queue.close()
    prefix = "dry run: would have " if args.dry_run else ""
    entries = "message(s)" if queue.name == "amqp" else "queue row(s)"
    print("%s: %d %s in the queues of %s" % (queue.name, report["messages"], entries, selection.describe()))
    print("%sput back %d lost attempt(s)%s" % (prefix, len(report["missing"]),
                                               (": " + ", ".join(map(str, report["missing"][:50]))
                                                + (" ..." if len(report["missing"]) > 50 else ""))
                                               if report["missing"] else ""))
    print("%sdropped %d %s whose attempt is no longer queued there" % (prefix, report["dropped"], entries))
    if not args.dry_run and report["republished"] < len(report["missing"]):
        print("warning: only %d were confirmed; run this again when the broker is healthy" % report["republished"])
        return 1
    for label, count in sorted(report["other_queue"].items()):
        print("note: %d queued attempt(s) are carried by the %s queue, not the configured %s one; run "
              "database_initialisation/init_queues.py to move them" % (count, label, queue.name))
    return 0
