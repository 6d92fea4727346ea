"""display_job_tree.py: every task of a job (or all jobs) as a tree, with state, attempts and metadata."""

from __future__ import annotations

from eas_controller import cli


def build_parser():
    parser = cli.parser(__doc__, "JSON output: a list of task objects with task_id, parent_id, job_name, task_name, "
                                 "task_type, state, attempts, metadata (and more); see docs/diagnostics.md")
    parser.add_argument("--job-name", help="only jobs with this name")
    parser.add_argument("--job-id", type=int, help="only this job")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: display(args))


def display(args) -> int:
    from eas_controller import reports
    from eas_controller.database.engine import read_transaction

    engine = cli.connect(cli.settings_from(args))
    with read_transaction(engine) as connection:
        rows = reports.job_tree(connection, args.job_name, args.job_id)
    if args.format == "table":
        print(reports.render_tree(rows) if rows else "(no tasks)")
    else:
        print(reports.emit(rows, args.format, ["task_id", "parent_id", "job_id", "job_name", "task_name", "task_type",
                                               "state", "attempts", "metadata", "chain_path", "depth", "inherited",
                                               "error"]))
    return 0
