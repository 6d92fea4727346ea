#!/usr/bin/env python3
"""Claim throughput of our queues: ``Queue.claim`` plus the worker's real completion transaction.

The database holds real tasks with queued attempts (submitted and promoted by the scheduler's own code,
before the clock starts). Each process registers as a worker and loops: claim up to ``limit`` attempts
(the SQL queue: ``SELECT ... FOR UPDATE SKIP LOCKED`` on its narrow table; the AMQP queue: a delivery,
then the claim in SQL), then record them as succeeded with the fenced completion transaction the worker
uses (``worker.completion.record_outcomes``: the attempts of one claim in one transaction, as the worker's
recorder groups results that finish together). No task process runs: this is the queue and the database
alone. Every claim is recorded with its claimer (attempt and task ids) and checked for duplicates.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import importlib.util
import socket
import time

from bench.common import BACKENDS, Result, Services, duplicate_count, fresh_schema, run_processes, unavailable_reason


def amqp_queue_available() -> bool:
    return importlib.util.find_spec("eas_controller.queues.amqp") is not None


def null_chain(count: int, job_name: str = "bench") -> dict:
    return {"job_name": job_name, "task_list": [{"task": "null"} for _ in range(count)]}


def load_queued_attempts(engine, queue, count: int) -> int:
    """Submit ``count`` null tasks and promote them (attempts queued in ``queue``); returns the job id."""
    from eas_controller.scheduler import Scheduler
    from eas_controller.submission import submit_chain

    job_id, _plan = submit_chain(engine, null_chain(count), "bench")
    Scheduler(engine, queue, batch_size=5000).run_pass()
    return job_id


def register_worker(engine, name: str) -> dict:
    from eas_controller.database.engine import run_transaction
    from eas_controller.store import workers as worker_store

    worker_id = run_transaction(engine, lambda connection: worker_store.register(
        connection, name, socket.gethostname(), os.getpid(), ["null"], 1, 0, 1, 1))
    return dict(id=worker_id, name=name, host=socket.gethostname(), pid=os.getpid())


def complete(engine, worker: dict, claims: list[dict]) -> list[str]:
    """The worker's completion transaction for attempts that succeeded in no time: the claimed group is
    recorded together, as a worker's recorder does with results that finish together."""
    from eas_controller.database.engine import run_transaction
    from eas_controller.retries import RetryPolicy
    from eas_controller.worker import completion
    from eas_controller.worker.execution import Outcome, PreparedAttempt

    items = []
    for claim in claims:
        prepared = PreparedAttempt(claim=claim, task_type=None, work_dir="", environment={}, inputs={}, outputs={},
                                   final_outputs={}, description_path="", metadata_in_path="", metadata_out_path="",
                                   stdout_path="", stderr_path="", description=claim["description"])
        items.append(completion.Completion(prepared, Outcome(succeeded=True, exit_status=0, wall_s=0.0), {}))
    return run_transaction(engine, lambda connection: completion.record_outcomes(connection, worker, items, RetryPolicy(1, 5.0)))


def claim_loop(url: str, settings, limit: int, claimer: int, complete_them: bool = True) -> tuple[list, dict]:
    """One claimer: claim up to ``limit`` attempts per transaction, complete them (unless ``complete_them`` is
    false: the claim alone is measured); stop when none come."""
    from eas_controller.database.engine import make_engine
    from eas_controller.queues import make_queue

    queue_kind = settings.queue
    engine = make_engine(url, pool_size=2)
    queue = make_queue(settings, engine)
    worker = register_worker(engine, "bench-claimer-%d" % claimer)
    claimed, lost, last_claim = [], 0, time.time()
    while True:
        claims = queue.claim(worker, None, limit, 60.0)
        if not claims:
            if queue_kind == "sql" or time.time() - last_claim > 2.0:  # a broker may still be delivering
                break
            time.sleep(0.01)
            continue
        last_claim = time.time()
        claimed.extend((claim["attempt_id"], claim["task_id"]) for claim in claims)
        if complete_them:
            lost += sum(result != "succeeded" for result in complete(engine, worker, claims))
    queue.close()
    engine.dispose()
    return claimed, dict(lost=lost)


def measure(services: Services, url: str, queue_kind: str, jobs: int, processes: int, limit: int,
            complete_them: bool = True) -> dict:
    import sqlalchemy as sa

    from bench.common import delete_amqp_queues
    from eas_controller.database.engine import read_transaction
    from eas_controller.database.schema import tasks
    from eas_controller.queues import make_queue

    settings = services.settings(url, queue_kind)
    engine = fresh_schema(url)
    queue = make_queue(settings, engine)
    try:
        job_id = load_queued_attempts(engine, queue, jobs)
        queue.close()
        elapsed, outputs = run_processes(claim_loop, [(url, settings, limit, n, complete_them)
                                                      for n in range(1, processes + 1)])
    finally:
        if queue_kind == "amqp":
            delete_amqp_queues(services.amqp_url, services.amqp_prefix)
    attempt_claims, task_claims, lost = [], [], 0
    for claimer, (claimed, counters) in enumerate(outputs, start=1):
        attempt_claims.extend((attempt_id, claimer) for attempt_id, _task in claimed)
        task_claims.extend((task_id, claimer) for _attempt, task_id in claimed)
        lost += counters["lost"]
    with read_transaction(engine) as connection:
        done = connection.execute(sa.select(sa.func.count()).select_from(tasks).where(
            tasks.c.job_id == job_id, tasks.c.state == ("done" if complete_them else "running"),
            tasks.c.is_control.is_(False))).scalar()
    engine.dispose()
    return dict(rate=len(attempt_claims) / elapsed, elapsed=elapsed, claims=len(attempt_claims),
                duplicates=max(duplicate_count(attempt_claims), duplicate_count(task_claims)), done=done, lost=lost)


def run(services: Services, quick: bool = True, backends=BACKENDS, process_counts=(1, 2, 4), jobs: int | None = None,
        limits=(1, 10), queues=("sql", "amqp")) -> list[Result]:
    jobs = jobs or (2000 if quick else 5000)
    results = []
    for queue_kind in queues:
        for backend in backends:
            if queue_kind == "amqp" and backend != "mariadb":
                continue  # the broker carries the news; one SQL back end is enough to measure it
            reason = unavailable_reason(services, backend)
            if queue_kind == "amqp":
                reason = reason or unavailable_reason(services, "amqp")
                if not amqp_queue_available():
                    reason = "eas_controller/queues/amqp.py does not exist yet"
            variants = [(limit, True) for limit in limits]
            if queue_kind == "sql":
                variants += [(limit, False) for limit in limits if limit > 1]  # the claim alone, batched
            for limit, complete_them in variants:
                name = "our %s queue: %s, %s" % (
                    queue_kind.upper(), "claim + completion" if complete_them else "claim only (no completion)",
                    "1 job/claim" if limit == 1 else "up to %d jobs/claim" % limit)
                for processes in process_counts:
                    if reason:
                        results.append(Result.skipped("ours", name, backend, reason, "jobs/s", processes=processes))
                        continue
                    measured = measure(services, services.sqlalchemy_url(backend, "claims"), queue_kind, jobs,
                                       processes, limit, complete_them)
                    problems = []
                    if measured["done"] != jobs:
                        problems.append("%d of %d tasks %s" % (measured["done"], jobs,
                                                               "done" if complete_them else "claimed"))
                    if measured["lost"]:
                        problems.append("%d completions lost ownership" % measured["lost"])
                    results.append(Result("ours", name, backend if queue_kind == "sql" else "amqp", measured["rate"],
                                          "jobs/s", processes=processes, jobs=jobs, duplicates=measured["duplicates"],
                                          note="; ".join(problems), extra=dict(elapsed_s=measured["elapsed"],
                                                                               limit=limit, database=backend)))
    return results


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--jobs", type=int, help="jobs per measurement")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only these back ends")
    parser.add_argument("--limit", action="append", type=int, help="jobs per claim (repeatable; default 1 and 10)")
    parser.add_argument("--queue", action="append", choices=("sql", "amqp"), help="only these queues")
    parser.add_argument("--processes", action="append", type=int, help="process counts (default 1, 2, 4)")
    args = parser.parse_args(argv)
    print_results(run(Services.from_environment(), args.quick, tuple(args.backend or BACKENDS),
                      tuple(args.processes or (1, 2, 4)), args.jobs, tuple(args.limit or (1, 10)),
                      tuple(args.queue or ("sql", "amqp"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
