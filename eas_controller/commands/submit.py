"""submit.py: validate a task chain (JSON) and create its tasks in the database, in one transaction."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./submit.py --tasks ../../demo_jobs/hello_pipeline.json
  ./submit.py --tasks job.json --dry-run        validate and show the expanded tree, write nothing
  cat job.json | ./submit.py --tasks -           read the chain from standard input
  ./submit.py --tasks job.json --resume --dry-run   which tasks would run again, and why
  ./submit.py --tasks job.json --resume         reuse the results of unchanged tasks (docs/resume.md)
The tasks start once ./schedule_all_waiting_tasks.py runs and workers are up."""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--tasks", required=True, metavar="FILE", help="the task chain (JSON); - reads standard input")
    parser.add_argument("--job-name", help="override the chain's job_name")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the expanded tree; write nothing")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the results of tasks unchanged since a succeeded run of the same job instead of "
                             "running them (also the chain's \"resume\": true); with --dry-run, list what would run "
                             "and why")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="how --resume prints its decisions (default: table)")
    return parser


def submit(args) -> int:
    import json

    from eas_controller.chains import ChainError, read_chain_file
    from eas_controller.database.engine import read_transaction
    from eas_controller.registry import load_registry
    from eas_controller.submission import outside_identities, plan_resume, resume_requested, submit_chain
    from eas_controller.views.resume import decision_rows, render_decisions, summary

    settings = cli.settings_from(args)
    chain, source = read_chain_file(args.tasks)
    resuming, strict = resume_requested(chain if isinstance(chain, dict) else {}, args.resume)
    if args.format != "table" and not resuming:
        raise ChainError("%s: --format %s prints the decisions of --resume; add --resume" % (source, args.format))
    engine = cli.connect(settings)
    if args.dry_run:
        from eas_controller.chains import expand_chain
        from eas_controller.views.plan import render_plan
        from eas_controller.submission import check_inputs

        with read_transaction(engine) as connection:
            known = load_registry(connection)
            plan = expand_chain(chain, source, known, args.job_name)
            check_inputs(connection, plan, lock=False)
        decisions = None
        if resuming:
            identities = outside_identities(plan, settings.s3_endpoint_url)
            with read_transaction(engine) as connection:
                decisions = plan_resume(connection, plan, strict, identities)
        if decisions is None:
            print(render_plan(plan))
        elif args.format == "table":
            print(render_decisions(decisions))
            print("\n" + summary(decisions))
        else:
            print(render_decisions(decisions, args.format))
            return 0
        print("\ndry run: the chain is valid; nothing was written")
        return 0
    job_id, plan, decisions = submit_chain(engine, chain, source, args.job_name, args.resume, with_decisions=True,
                                           s3_endpoint_url=settings.s3_endpoint_url)
    if args.format == "json":
        print(json.dumps(dict(job_id=job_id, job_name=plan.job_name, tasks=len(plan.nodes),
                              worker_tasks=len(plan.worker_tasks), decisions=decision_rows(decisions)), indent=1))
        return 0
    print("submitted job %d (%s): %d tasks (%d to run on workers, %d control-flow) from %s" % (
        job_id, plan.job_name, len(plan.nodes), len(plan.worker_tasks), len(plan.nodes) - len(plan.worker_tasks), source))
    if resuming:
        print(summary(decisions))
    return 0


main = cli.command(build_parser, submit)
