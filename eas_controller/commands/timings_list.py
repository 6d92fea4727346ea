"""timings_list.py: per task type (and per value of a loop parameter with --by), how long tasks took.

Over succeeded attempts: count, mean, median and max of the wall time, the CPU time of the implementation
and the CPU time including its children."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./timings_list.py --job-name hello_pipeline
  ./timings_list.py --task-type synthesise_lightcurve --by planet_radius --format csv"""


def build_parser(doc: str = __doc__, default_format: str = "table"):
    parser = cli.parser(doc, EPILOG.replace("timings_list", "timings_to_csv") if default_format == "csv" else EPILOG)
    parser.add_argument("--job-name", help="only jobs with this name")
    parser.add_argument("--task-type", help="only tasks of this type")
    parser.add_argument("--by", metavar="PARAMETER", help="one row per value of this loop parameter (task metadata)")
    cli.add_format_argument(parser, default_format)
    return parser


def main(argv: list[str], doc: str = __doc__, default_format: str = "table") -> int:
    args = build_parser(doc, default_format).parse_args(argv)
    return cli.run(lambda: show(args))


def show(args) -> int:
    from eas_controller.views.output import emit
    from eas_controller.views.timings import timing_columns, timings

    rows = cli.read_view(args, lambda connection, _s: timings(connection, args.job_name, args.task_type, args.by))
    print(emit(rows, args.format, timing_columns(args.by)))
    return 0
