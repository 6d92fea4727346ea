"""db_save.py: save the whole task database to one portable file (gzip-compressed JSON lines).

Every table is read from one consistent snapshot, so the pipeline may keep running. The file records the
schema version and restores into SQLite, MariaDB/MySQL or PostgreSQL with db_restore.py."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./db_save.py                                 writes YYYYMMDD_HHMMSS.jsonl.gz (now, local time) here
  ./db_save.py --output eas-2024-05-01.jsonl.gz
  ./db_save.py --db-url mysql://root@127.0.0.1/eas --output backup.jsonl.gz"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="file to write (.jsonl.gz; default: named from the local date and time, "
                             "YYYYMMDD_HHMMSS.jsonl.gz in the current folder)")
    parser.add_argument("--quiet", action="store_true", help="do not list the tables")
    return parser


def default_output(now: float | None = None) -> str:
    """The seed's dump name: the local date and time, so successive saves never overwrite each other."""
    import time

    return time.strftime("%Y%m%d_%H%M%S.jsonl.gz", time.localtime(now))


def save(args) -> int:
    import os

    from eas_controller import backup
    from eas_controller.config import redact_url

    if args.output is None:
        args.output = default_output()
        if os.path.exists(args.output):
            raise cli.CommandError("%s already exists (saved less than a second ago?); give --output" % args.output)
    settings = cli.settings_from(args)
    engine = cli.connect(settings)
    progress = None if args.quiet else (lambda table, rows: print("  %-24s %10d rows" % (table, rows)))
    print("saving %s" % redact_url(settings.database_url))
    with cli.one_line_errors(backup.BackupError, OSError):
        counts = backup.save(engine, args.output, progress)
    print("saved %d rows in %d tables to %s (%.1f MB)" % (sum(counts.values()), len(counts), args.output,
                                                          os.path.getsize(args.output) / 1e6))
    return 0


main = cli.command(build_parser, save)
