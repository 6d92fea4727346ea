"""db_restore.py: restore a file written by db_save.py into any supported database.

The schema is created if the database has none. A database that already holds tasks is refused unless
--force is given (then its contents are replaced). The restore is one transaction: all or nothing. New
rows continue past the restored ids. Queued attempts are handed to the configured queue (SQL or
RabbitMQ); attempts that were running when the file was saved are retried by the scheduler once their
lease expires. Stop the scheduler and the workers of the target database first."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./db_restore.py --input backup.jsonl.gz
  ./db_restore.py --input backup.jsonl.gz --db-url mysql://root@127.0.0.1/eas --force"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--input", "-i", required=True, metavar="FILE", help="a file written by db_save.py")
    parser.add_argument("--force", action="store_true", help="replace the contents of a database that is not empty")
    parser.add_argument("--quiet", action="store_true", help="do not list the tables")
    return parser


def restore(args) -> int:
    from eas_controller import backup
    from eas_controller.commands.init_schema import ensure_database_exists
    from eas_controller.config import redact_url
    from eas_controller.queues import make_queue
    from eas_controller.queues.transfer import adopt_restored

    settings = cli.settings_from(args)
    with cli.one_line_errors(backup.BackupError):
        backup.read_header(args.input)  # a wrong file is refused before anything is touched
    ensure_database_exists(settings.database_url)
    engine = cli.connect(settings, check_schema=False)
    progress = None if args.quiet else (lambda table, rows: print("  %-24s %10d rows" % (table, rows)))
    print("restoring %s into %s" % (args.input, redact_url(settings.database_url)))
    with cli.one_line_errors(backup.BackupError, OSError):
        counts = backup.restore(engine, args.input, force=args.force, progress=progress)
    print("restored %d rows in %d tables" % (sum(counts.values()), len(counts)))
    queue = make_queue(settings, engine)
    try:
        report = adopt_restored(engine, queue)
    finally:
        queue.close()
    print("%d queued attempt(s) carried by the %s queue (%d handed to it)" % (report["queued"], queue.name,
                                                                          report["handed"]))
    if report["unconfirmed"]:
        print("warning: RabbitMQ did not confirm %d of them; the scheduler publishes them again, or run "
              "queue_management/requeue_lost_messages.py" % report["unconfirmed"])
        return 1
    return 0


main = cli.command(build_parser, restore)
