#!/usr/bin/env python3
"""Does the controller slow down as finished work piles up? Claim latency and scheduler pass time at
10^4, 10^5 and 10^6 finished tasks, and the submission rate of a large chain.

History is bulk-loaded: finished tasks (each with a succeeded attempt and a satisfied dependency row)
are doubled with ``INSERT ... SELECT`` until the target is reached. At each size:
- claim latency: 200 null tasks are submitted and promoted, then claimed one at a time
  (``SqlQueue.claim``, limit 1) and completed with the worker's completion transaction; the median
  claim and completion times are reported;
- scheduler pass time: 1,000 null tasks are submitted and one ``Scheduler.run_pass`` promotes them all;
  also the median of 10 idle passes (nothing ready), which is what a waiting daemon pays.
The goal is flat: each at 10^6 within 1.2x of 10^4.
Submission: a flat chain of N null tasks through ``submit_chain`` (validate, expand, write).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import statistics
import time

from bench.common import BACKENDS, Result, Services, unavailable_reason


def _count(engine, table) -> int:
    import sqlalchemy as sa

    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def grow_history(engine, target: int) -> float:
    """Add finished tasks (done, one succeeded attempt, one satisfied dependency) until ``target`` exist."""
    import sqlalchemy as sa

    from eas_controller.database.engine import write_transaction
    from eas_controller.database.schema import attempts, jobs, task_dependencies, tasks

    started = time.perf_counter()
    with write_transaction(engine) as connection:
        job_id = connection.execute(sa.select(jobs.c.id).where(jobs.c.name == "history")).scalar()
        if job_id is None:
            job_id = connection.execute(jobs.insert().values(name="history", source="bench", submitted_at=time.time())
                                        ).inserted_primary_key[0]
            now = time.time()
            connection.execute(tasks.insert(), [dict(
                job_id=job_id, parent_id=None, name=None, chain_path="task_list[%d]" % n, task_type="null",
                is_control=False, job_name="history", working_directory="", description='{"task": "null"}',
                metadata="{}", state="done", expansions=0, needs_evaluation=False, priority=0, unmet_dependencies=0,
                attempt_count=1, max_attempts=None, created_at=now, updated_at=now) for n in range(1000)])
    columns = ["job_id", "parent_id", "name", "chain_path", "task_type", "is_control", "job_name", "working_directory",
               "description", "metadata", "state", "expansions", "needs_evaluation", "priority", "unmet_dependencies",
               "attempt_count", "max_attempts", "created_at", "updated_at"]
    history = sa.and_(tasks.c.job_id == job_id)
    while True:
        with engine.connect() as connection:
            have = connection.execute(sa.select(sa.func.count()).select_from(tasks).where(history)).scalar()
            top = connection.execute(sa.select(sa.func.max(attempts.c.task_id))).scalar() or 0
        if have < target:
            with write_transaction(engine) as connection:
                source = sa.select(*[tasks.c[name] for name in columns]).where(history).order_by(tasks.c.id).limit(
                    min(have, target - have, 250_000))
                if engine.dialect.name in ("mysql", "mariadb"):  # MySQL cannot read the table it inserts into
                    source = sa.select(*[sa.column(name) for name in columns]).select_from(source.subquery())
                connection.execute(tasks.insert().from_select(columns, source))
        with write_transaction(engine) as connection:
            new_tasks = sa.select(tasks.c.id).where(history, tasks.c.id > top)
            connection.execute(attempts.insert().from_select(
                ["task_id", "number", "task_type", "state", "queue", "queued_at", "started_at", "ended_at", "worker_id",
                 "worker_name", "host", "pid", "exit_status", "wall_s", "cpu_s", "cpu_children_s"],
                sa.select(tasks.c.id, sa.literal(1), tasks.c.task_type, sa.literal("succeeded"), sa.literal("sql"),
                          tasks.c.created_at, tasks.c.created_at, tasks.c.created_at, sa.literal(0),
                          sa.literal("history"), sa.literal("bench"), sa.literal(0), sa.literal(0), sa.literal(0.0),
                          sa.literal(0.0), sa.literal(0.0)).where(history, tasks.c.id > top)))
            connection.execute(task_dependencies.insert().from_select(
                ["task_id", "requires_task_id", "kind", "satisfied"],
                sa.select(tasks.c.id, tasks.c.id, sa.literal("metadata"), sa.true()).where(tasks.c.id.in_(new_tasks))))
        if have >= target:
            break
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("ANALYZE")
    elif engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


def _finish_job(engine, job_id: int) -> None:
    """Mark a measurement job finished by bulk update, so it joins the history."""
    import sqlalchemy as sa

    from eas_controller.database.engine import write_transaction
    from eas_controller.database.schema import attempts, sql_queue, tasks

    with write_transaction(engine) as connection:
        task_ids = sa.select(tasks.c.id).where(tasks.c.job_id == job_id)
        attempt_ids = [row[0] for row in connection.execute(sa.select(attempts.c.id).where(attempts.c.task_id.in_(task_ids)))]
        for start in range(0, len(attempt_ids), 500):
            connection.execute(sql_queue.delete().where(sql_queue.c.attempt_id.in_(attempt_ids[start:start + 500])))
        connection.execute(attempts.update().where(attempts.c.task_id.in_(task_ids)).values(state="succeeded"))
        connection.execute(tasks.update().where(tasks.c.job_id == job_id).values(state="done"))


def measure_at(engine, queue, claims: int = 200, promote: int = 1000, idle_passes: int = 10) -> dict:
    from bench.queue_claim import complete, load_queued_attempts, null_chain, register_worker
    from eas_controller.scheduler import Scheduler
    from eas_controller.submission import submit_chain

    job_id = load_queued_attempts(engine, queue, claims)
    worker = register_worker(engine, "bench-scale")
    claim_ms, complete_ms = [], []
    while True:
        started = time.perf_counter()
        got = queue.claim(worker, None, 1, 60.0)
        if not got:
            break
        claim_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        complete(engine, worker, got[:1])
        complete_ms.append((time.perf_counter() - started) * 1000)
    _finish_job(engine, job_id)

    scheduler = Scheduler(engine, queue, batch_size=max(1000, promote))
    idle = []
    for _ in range(idle_passes):
        started = time.perf_counter()
        scheduler.run_pass()
        idle.append((time.perf_counter() - started) * 1000)
    busy_ms = []
    for _ in range(BUSY_PASSES):  # one pass is at the mercy of the server's background flushing: take a median
        job_id, _plan = submit_chain(engine, null_chain(promote), "bench")
        started = time.perf_counter()
        result = scheduler.run_pass()
        busy_ms.append((time.perf_counter() - started) * 1000)
        _finish_job(engine, job_id)
    return dict(claim_ms=statistics.median(claim_ms), complete_ms=statistics.median(complete_ms),
                pass_ms=statistics.median(busy_ms), promoted=result.promoted, idle_pass_ms=statistics.median(idle))


#: Busy scheduler passes timed at each history size (the median is reported).
BUSY_PASSES = 3


def history_scaling(services: Services, backend: str, sizes=(10_000, 100_000, 1_000_000), claims: int = 200,
                    promote: int = 1000) -> list[Result]:
    from bench.common import fresh_schema
    from eas_controller.queues.sql import SqlQueue

    url = services.sqlalchemy_url(backend, "scale")
    engine = fresh_schema(url)
    queue = SqlQueue(engine)
    results, first = [], None
    try:
        for size in sizes:
            load_s = grow_history(engine, size)
            measured = measure_at(engine, queue, claims, promote)
            first = first or measured
            label = "10^%d" % (len(str(size)) - 1) if str(size).strip("0") == "1" else "{:,}".format(size)
            for key, name in (("claim_ms", "claim latency (1 job, median)"),
                              ("complete_ms", "completion transaction (median)"),
                              ("pass_ms", "scheduler pass promoting %s tasks" % "{:,}".format(promote)),
                              ("idle_pass_ms", "scheduler idle pass (median)")):
                ratio = measured[key] / first[key] if first[key] else None
                results.append(Result("scale", "%s, %s finished tasks" % (name, label), backend, measured[key], "ms",
                                      jobs=size, note="" if size == sizes[0] else "x%.2f of %s" % (
                                          ratio, "{:,}".format(sizes[0])),
                                      extra=dict(history=size, ratio_to_smallest=ratio, load_s=round(load_s, 1),
                                                 metric=key)))
    finally:
        engine.dispose()
    return results


def submit_rate(services: Services, backend: str, tasks: int) -> Result:
    from bench.common import fresh_schema
    from bench.queue_claim import null_chain
    from eas_controller.submission import submit_chain

    engine = fresh_schema(services.sqlalchemy_url(backend, "submit"))
    try:
        started = time.perf_counter()
        submit_chain(engine, null_chain(tasks), "bench")
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    return Result("scale", "submit a flat chain of %s tasks" % "{:,}".format(tasks), backend, tasks / elapsed,
                  "tasks/s", jobs=tasks, extra=dict(elapsed_s=round(elapsed, 2)))


def run(services: Services, quick: bool = True, backends=BACKENDS, sizes=None, submit_tasks: int | None = None
        ) -> list[Result]:
    sizes = sizes or (10_000, 100_000, 1_000_000)
    submit_tasks = submit_tasks or (20_000 if quick else 100_000)
    history_backends = ("mariadb",) if quick else backends
    results = []
    for backend in backends:
        reason = unavailable_reason(services, backend)
        if reason:
            results.append(Result.skipped("scale", "history scaling", backend, reason, "ms"))
            continue
        if backend in history_backends:
            results += history_scaling(services, backend, sizes)
        results.append(submit_rate(services, backend, submit_tasks))
    return results


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="history scaling on MariaDB only; smaller chain")
    parser.add_argument("--sizes", help="comma-separated history sizes (default 10000,100000,1000000)")
    parser.add_argument("--submit-tasks", type=int, help="tasks in the submitted chain (default 20,000 quick, 100,000)")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only these back ends")
    args = parser.parse_args(argv)
    sizes = tuple(int(size) for size in args.sizes.split(",")) if args.sizes else None
    print_results(run(Services.from_environment(), args.quick, tuple(args.backend or BACKENDS), sizes, args.submit_tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
