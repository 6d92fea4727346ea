"""errors_list.py: failed and stalled attempts, newest first: task, worker, host, time and the error.

The error is shown as its last line (e.g. the exception); --verbose prints the whole traceback and the
attempt's stderr lines."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./errors_list.py --job-name hello_pipeline
  ./errors_list.py --task-type synthesise_lightcurve --since 2h --verbose
  ./errors_list.py --since "2026-12-01 09:00" --format json"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--job-name", help="only jobs with this name")
    parser.add_argument("--task-type", help="only tasks of this type")
    parser.add_argument("--since", metavar="WHEN",
                        help="only attempts that ended since WHEN: a duration ago (90s, 30m, 2h, 1d) or a UTC time "
                             "(YYYY-MM-DD[ HH:MM[:SS]])")
    parser.add_argument("--verbose", action="store_true", help="the whole error text (traceback) and stderr lines")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many attempts (default 1000)")
    cli.add_format_argument(parser)
    return parser


def parse_since(text: str, now: float) -> float:
    """``30m`` -> now - 1800; ``2026-12-01 09:00`` -> that UTC time, as epoch seconds."""
    import datetime
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match:
        return now - float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            parsed = datetime.datetime.strptime(text.strip(), pattern)
        except ValueError:
            continue
        return parsed.replace(tzinfo=datetime.timezone.utc).timestamp()
    raise cli.CommandError("--since %r is neither a duration (90s, 30m, 2h, 1d) nor a time (YYYY-MM-DD HH:MM)" % text)


def show(args) -> int:
    import time

    from eas_controller.views.errors import ERROR_COLUMNS, errors_list
    from eas_controller.views.output import emit

    since = parse_since(args.since, time.time()) if args.since else None
    rows = cli.read_view(args, lambda connection, _s: errors_list(connection, args.job_name, args.task_type, since,
                                                                  args.verbose, args.limit))
    if args.verbose and args.format == "table":
        for row in rows:
            print("== attempt %d of task %d (%s), %s on %s (%s) at %s, exit status %s" % (
                row["attempt"], row["task_id"], row["task_type"], row["state"], row["worker"], row["host"], row["ended"],
                row["exit_status"]))
            print(row["error"].rstrip())
            for line in row.get("log", []):
                print("  | " + line)
            print()
        if not rows:
            print("(nothing to show)")
        return 0
    print(emit(rows, args.format, ERROR_COLUMNS + (["log"] if args.verbose else [])))
    return 0


main = cli.command(build_parser, show)
