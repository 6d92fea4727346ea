"""run_local.py: submit a chain, schedule it and run it on N local workers until it is finished.

Prints a summary of every task and exits 0 only if every task in the job succeeded. Uses the configured
database (the embedded SQLite file by default) and creates the schema there if it is missing."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """example:
  ./run_local.py --tasks ../../demo_jobs/hello_pipeline.json --workers 2"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--tasks", required=True, metavar="FILE", help="the task chain (JSON); - reads standard input")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    parser.add_argument("--job-name", help="override the chain's job_name")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the results of tasks unchanged since a succeeded run of the same job (see "
                             "submit.py --resume)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table", help="summary format")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit("error: --workers must be at least 1")
    return cli.run(lambda: run_local(args))


def run_local(args) -> int:
    import os
    import signal
    import subprocess
    import sys
    import time

    from eas_controller import detections, states
    from eas_controller.views import jobs as job_views
    from eas_controller.views.output import emit
    from eas_controller.chains import read_chain_file
    from eas_controller.database.engine import read_transaction, write_transaction
    from eas_controller.database.manage import create_schema, schema_version
    from eas_controller.queues import make_queue
    from eas_controller.registry import read_registries, store_registry
    from eas_controller.scheduler import Scheduler
    from eas_controller.submission import submit_chain

    settings = cli.settings_from(args)
    chain, source = read_chain_file(args.tasks)
    engine = cli.connect(settings, check_schema=False)
    if schema_version(engine) is None:
        create_schema(engine)
        with write_transaction(engine) as connection:
            store_registry(connection, read_registries(settings.task_type_files))
        print("created the database schema in %s" % settings.database_url)
    cli.connect(settings)  # checks the schema version
    job_id, plan, decisions = submit_chain(engine, chain, source, args.job_name, args.resume, with_decisions=True,
                                           s3_endpoint_url=settings.s3_endpoint_url)
    print("submitted job %d (%s): %d tasks, %d on workers" % (job_id, plan.job_name, len(plan.nodes),
                                                               len(plan.worker_tasks)))
    if decisions:
        from eas_controller.views.resume import summary

        print(summary(decisions))
    log_dir = os.path.join(settings.data_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    environment = dict(os.environ, EAS_DB_URL=settings.database_url, EAS_DATA_DIR=settings.data_dir,
                       EAS_QUEUE=settings.queue, EAS_LEASE_SECONDS=str(settings.lease_seconds))
    if settings.settings_path:
        environment["EAS_CONFIG"] = settings.settings_path
    processes = []
    for number in range(1, args.workers + 1):
        log_path = os.path.join(log_dir, "job%d-worker%d.log" % (job_id, number))
        with open(log_path, "w") as log_file:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "eas_controller", "worker", "--name", "local-%d-%d" % (job_id, number),
                 "--concurrency", "1", "--cpus", "1", "--poll-interval", "0.2"],
                env=environment, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            ))
    print("started %d workers (logs in %s)" % (args.workers, log_dir))
    scheduler = Scheduler(engine, make_queue(settings, engine), settings.max_attempts,
                          retry_backoff_s=settings.retry_backoff_s, max_lost_attempts=settings.max_lost_attempts,
                          lease_seconds=settings.lease_seconds)
    started = time.time()
    timed_out = False
    progress = Progress(engine, job_id)
    try:
        while True:
            result = scheduler.run_pass()
            with read_transaction(engine) as connection:
                if job_views.job_is_finished(connection, job_id):
                    break
            progress.maybe_print()
            if args.timeout and time.time() - started > args.timeout:
                timed_out = True
                break
            dead = [p for p in processes if p.poll() is not None]
            if len(dead) == len(processes):
                raise cli.CommandError("every worker exited early; see the logs in %s" % log_dir)
            if not result.did_something:
                time.sleep(0.05)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    elapsed = time.time() - started
    progress.finish()
    with read_transaction(engine) as connection:
        summary = job_views.job_summary(connection, job_id)
        counts = job_views.job_state_counts(connection, job_id)
        detection_table = detections.detection_rows(connection, job_id) if args.format == "table" else []
        folder = detections.job_products_folder(connection, job_id)
    print(emit(summary, args.format))
    if detection_table:
        print("\ndetections (outcome PASS = the search found the injected planet's period):")
        print(detections.render(detection_table))
    if args.format == "table":
        print("products (light curves, search results) under %s" % os.path.join(settings.data_dir, folder))
    succeeded = set(counts) <= {states.DONE}
    print("job %d %s in %.1f s: %s" % (
        job_id, "succeeded" if succeeded else ("timed out" if timed_out else "did not succeed"), elapsed,
        ", ".join("%d %s" % (count, state) for state, count in sorted(counts.items()))))
    return 0 if succeeded else 1


class Progress:
    """A progress line while the job runs: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, engine, job_id: int, every_s: float = 1.0):
        import sys
        import time

        self.engine, self.job_id = engine, job_id
        self.tty = sys.stdout.isatty()
        self.every_s = every_s if self.tty else 5.0
        self.started = self.last = time.time()
        self.printed = False

    def maybe_print(self) -> None:
        import time

        from eas_controller.database.engine import read_transaction
        from eas_controller.views import jobs as job_views

        now = time.time()
        if now - self.last < self.every_s:
            return
        self.last = now
        with read_transaction(self.engine) as connection:
            counts = job_views.job_state_counts(connection, self.job_id)
        total = sum(counts.values())
        text = "progress: %d/%d tasks done, %d running, %d failed (%.0f s)" % (
            counts.get("done", 0), total, counts.get("running", 0), counts.get("failed", 0), now - self.started)
        print(("\r" + text) if self.tty else text, end="" if self.tty else "\n", flush=True)
        self.printed = True

    def finish(self) -> None:
        if self.printed and self.tty:
            print()
