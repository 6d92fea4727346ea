"""worker_list.py: live and dead workers: host, pid, capabilities, resources, free slots, the attempts each
runs now and when it was last seen. A worker is live while it is not stopped and was seen in the last
two minutes."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./worker_list.py
  ./worker_list.py --live-only --format json"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--live-only", action="store_true", help="only live workers")
    parser.add_argument("--limit", type=int, default=500, help="at most this many, most recently seen first")
    cli.add_format_argument(parser)
    return parser


def show(args) -> int:
    from eas_controller.views.output import emit, when
    from eas_controller.views.workers import WORKER_COLUMNS, worker_list

    rows = cli.read_view(args, lambda connection, _s: worker_list(connection, args.live_only, args.limit))
    if args.format == "table":
        for row in rows:
            row["last_seen"] = when(row["last_seen"])
            row["capabilities"] = ",".join(row["capabilities"]) if len(row["capabilities"]) <= 6 else \
                "%d types" % len(row["capabilities"])
    print(emit(rows, args.format, WORKER_COLUMNS))
    return 0


main = cli.command(build_parser, show)
