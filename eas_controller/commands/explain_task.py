"""explain_task.py TASK_ID: why a task is where it is, in plain sentences.

Which inputs it waits for and the state of their producers, which metadata it waits for, whether any live
worker runs its type and has the resources it needs, whether a retry backoff or a hold applies, and its
attempts with their errors."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./explain_task.py 42
  ./explain_task.py 42 --format json

JSON output: the task's facts plus "reasons", a list of {code, text}; codes are listed in docs/diagnostics.md."""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("task_id", type=int, help="the task's id (see display_job_tree.py)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table: sentences for people (default); json: for programs")
    return parser


def show(args) -> int:
    import json

    from eas_controller.views.explain import explain_task, render_explanation

    result = cli.read_view(args, lambda connection, settings: explain_task(connection, args.task_id,
                                                                            settings.max_attempts))
    print(json.dumps(result, indent=1, default=str) if args.format == "json" else render_explanation(result))
    return 0


main = cli.command(build_parser, show)
