"""submit.py: validate a task chain (JSON) and create its tasks in the database, in one transaction."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./submit.py --tasks ../../demo_jobs/hello_pipeline.json
  ./submit.py --tasks job.json --dry-run        validate and show the expanded tree, write nothing
  cat job.json | ./submit.py --tasks -           read the chain from standard input
The tasks start once ./schedule_all_waiting_tasks.py runs and workers are up."""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--tasks", required=True, metavar="FILE", help="the task chain (JSON); - reads standard input")
    parser.add_argument("--job-name", help="override the chain's job_name")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the expanded tree; write nothing")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: submit(args))


def submit(args) -> int:
    from eas_controller.chains import read_chain_file
    from eas_controller.database.engine import read_transaction
    from eas_controller.registry import load_registry
    from eas_controller.submission import submit_chain

    settings = cli.settings_from(args)
    chain, source = read_chain_file(args.tasks)
    engine = cli.connect(settings)
    if args.dry_run:
        from eas_controller.chains import expand_chain
        from eas_controller.views.plan import render_plan
        from eas_controller.submission import check_inputs

        with read_transaction(engine) as connection:
            known = load_registry(connection)
            plan = expand_chain(chain, source, known, args.job_name)
            check_inputs(connection, plan, lock=False)
        print(render_plan(plan))
        print("\ndry run: the chain is valid; nothing was written")
        return 0
    job_id, plan = submit_chain(engine, chain, source, args.job_name)
    print("submitted job %d (%s): %d tasks (%d to run on workers, %d control-flow) from %s" % (
        job_id, plan.job_name, len(plan.nodes), len(plan.worker_tasks), len(plan.nodes) - len(plan.worker_tasks), source))
    return 0
