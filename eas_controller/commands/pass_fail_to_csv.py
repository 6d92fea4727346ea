"""pass_fail_to_csv.py: the outcomes of a parameter grid as CSV: one row per task of the type, one column
per loop parameter and one per output-metadata key (such as `outcome`)."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./pass_fail_to_csv.py --job-name sweep --task-type verify > grid.csv
  ./pass_fail_to_csv.py --job-name sweep --task-type verify --format table"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--job-name", help="only jobs with this name")
    parser.add_argument("--task-type", help="only tasks of this type (default: every worker task)")
    cli.add_format_argument(parser, "csv")
    return parser


def show(args) -> int:
    from eas_controller.views.grid import pass_fail_grid
    from eas_controller.views.output import emit

    rows, columns = cli.read_view(args, lambda connection, _s: pass_fail_grid(connection, args.job_name, args.task_type))
    print(emit(rows, args.format, columns))
    return 0


main = cli.command(build_parser, show)
