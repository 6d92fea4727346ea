"""display_job_tree.py: every task of a job (or all jobs) as a tree, with state, attempts, metadata and, per
node, the counts per state of the tasks in its subtree."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """JSON output: a list of task objects with task_id, parent_id, job_name, task_name, task_type, state,
attempts, metadata (and more, e.g. subtree_counts); see docs/diagnostics.md.

examples:
  ./display_job_tree.py --job-name hello_pipeline
  ./display_job_tree.py --max-depth 1 --format json
  ./display_job_tree.py --show-running-only 1
  ./display_job_tree.py --status waiting"""


def build_parser():
    from eas_controller.views.tree import STATUS_FILTERS

    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--job-name", help="only jobs with this name")
    parser.add_argument("--job-id", type=int, help="only this job")
    parser.add_argument("--max-depth", type=int, default=None, metavar="N",
                        help="show tasks at most N levels below the top (0: the top tasks only; default: all)")
    parser.add_argument("--show-running-only", type=int, choices=(0, 1), default=0, metavar="0|1",
                        help="1: only tasks that are running (control tasks run while their children do)")
    parser.add_argument("--status", choices=list(STATUS_FILTERS), default="any",
                        help="only tasks in this state (waiting includes ready and held; stalled: tasks with a "
                             "lost attempt)")
    cli.add_format_argument(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.max_depth is not None and args.max_depth < 0:
        raise SystemExit("error: --max-depth must not be negative")
    return cli.run(lambda: display(args))


def display(args) -> int:
    from eas_controller.views import tree
    from eas_controller.views.output import emit

    from eas_controller.views import NotFound

    def body(connection, _settings):
        try:
            return tree.job_tree(connection, args.job_name, args.job_id, args.max_depth,
                                 bool(args.show_running_only), args.status)
        except NotFound:  # the tree of a job with no tasks is empty, as it always was (DESIGN section 11)
            return []

    rows = cli.read_view(args, body)
    if args.format == "table":
        print(tree.render_tree(rows) if rows else "(no tasks)")
    else:
        print(emit(rows, args.format, tree.TREE_COLUMNS))
    return 0
