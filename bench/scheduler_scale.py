#!/usr/bin/env python3
"""Does a scheduler pass cost in proportion to the work that became ready, not to the size of the table?

For each back end, the tables hold N waiting tasks (dependencies unmet: 1,000, then 100,000). Each round
inserts 100 ready tasks and times one ``Scheduler.run_pass()`` (stalled-lease check, promotion of the 100
with ``FOR UPDATE SKIP LOCKED``, attempts, queue entries, commit). The median over the rounds is
reported, with the pass that finds nothing ready (what an idle daemon pays each interval) and the status
line the daemon prints (its counts read every waiting task, so the daemon refreshes them only once 20
times their cost has passed). The goal: the pass at 100,000 waiting
within about 1.2x of the pass at 1,000 waiting. With RabbitMQ reachable, the same is measured with the
AMQP queue on SQLite (publishing with confirms included).

  bench/scheduler_scale.py [--quick] [--backend sqlite|mariadb|postgresql] [--json FILE]
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import json
import statistics
import time

from bench.common import BACKENDS, Result, Services, delete_amqp_queues, fresh_schema, unavailable_reason

GROUP = "scheduler_scale"
READY_PER_ROUND = 100
SIZES = (1_000, 100_000)


def insert_tasks(engine, count: int, state: str, job_id: int | None = None) -> int:
    """Tasks written straight into the table, 5,000 per statement batch."""
    import sqlalchemy as sa  # noqa: F401

    from eas_controller.database.engine import write_transaction
    from eas_controller.database.schema import jobs, tasks

    now = time.time()
    with write_transaction(engine) as connection:
        if job_id is None:
            job_id = connection.execute(jobs.insert().values(name="scale", source="bench", submitted_at=now)
                                        ).inserted_primary_key[0]
        for start in range(0, count, 5000):
            connection.execute(tasks.insert(), [dict(
                job_id=job_id, chain_path="task_list[%d]" % n, task_type="null", is_control=False, job_name="scale",
                working_directory="", description='{"task": "null"}', metadata="{}", state=state, expansions=0,
                needs_evaluation=False, priority=n % 3, unmet_dependencies=1 if state == "waiting" else 0,
                attempt_count=0, created_at=now, updated_at=now) for n in range(start, min(count, start + 5000))])
    return job_id


def measure(engine, queue, waiting: int, rounds: int) -> dict:
    """Median times (ms) of a pass promoting 100 ready tasks, an idle pass and the status line."""
    from eas_controller.database.engine import write_transaction
    from eas_controller.database.schema import attempts, sql_queue, tasks
    from eas_controller.scheduler import Scheduler, status_line

    with write_transaction(engine) as connection:
        for table in (sql_queue, attempts, tasks):
            connection.execute(table.delete())
    job_id = insert_tasks(engine, waiting, "waiting")
    scheduler = Scheduler(engine, queue)
    scheduler.run_pass()  # warm up: registry, connections, queue declarations
    passes, idle, status = [], [], []
    for _round in range(rounds):
        insert_tasks(engine, READY_PER_ROUND, "ready", job_id)
        started = time.perf_counter()
        result = scheduler.run_pass()
        passes.append((time.perf_counter() - started) * 1000)
        if result.promoted != READY_PER_ROUND:
            raise RuntimeError("a pass promoted %d tasks, not %d" % (result.promoted, READY_PER_ROUND))
        started = time.perf_counter()
        scheduler.run_pass()
        idle.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        status_line(engine, result)  # uncached: the daemon refreshes its counts once per 20x their cost
        status.append((time.perf_counter() - started) * 1000)
    return dict(pass_ms=statistics.median(passes), idle_ms=statistics.median(idle), status_ms=statistics.median(status))


def run_backend(label: str, url: str, queue_name: str, services: Services, rounds: int) -> list[Result]:
    from eas_controller.config import Settings
    from eas_controller.queues import make_queue

    engine = fresh_schema(url)
    prefix = "eas_bench_scale_%s." % os.urandom(4).hex()
    settings = Settings(db_url=url, queue=queue_name, amqp_url=services.amqp_url, amqp_queue_prefix=prefix)
    queue = make_queue(settings, engine)
    results, by_size = [], {}
    try:
        for size in SIZES:
            timing = by_size[size] = measure(engine, queue, size, rounds)
            extra = dict(waiting=size, ready=READY_PER_ROUND, rounds=rounds, queue=queue_name, **timing)
            name = "scheduler pass: %d ready, %s waiting (%s queue)" % (READY_PER_ROUND, format(size, ","), queue_name)
            results.append(Result(GROUP, name, label, round(timing["pass_ms"], 2), "ms", jobs=READY_PER_ROUND,
                                  note="idle pass %.2f ms, status line %.2f ms" % (timing["idle_ms"], timing["status_ms"]),
                                  extra=extra))
        small, large = by_size[SIZES[0]]["pass_ms"], by_size[SIZES[-1]]["pass_ms"]
        results.append(Result(GROUP, "pass at %s waiting / pass at %s waiting (%s queue)" % (
            format(SIZES[-1], ","), format(SIZES[0], ","), queue_name), label, round(large / small, 3), "ratio",
            note="goal: about 1 (at most ~1.2)"))
    finally:
        queue.close()
        engine.dispose()
        if queue_name == "amqp":
            delete_amqp_queues(services.amqp_url, prefix, ["null"])
    return results


def run(services: Services, quick: bool = False, backends=BACKENDS) -> list[Result]:
    rounds = 5 if quick else 11
    results: list[Result] = []
    for backend in backends:
        reason = unavailable_reason(services, backend)
        if reason:
            results.append(Result.skipped(GROUP, "scheduler pass", backend, reason, "ms"))
            continue
        results += run_backend(backend, services.sqlalchemy_url(backend, "scheduler_scale"), "sql", services, rounds)
    if "sqlite" in backends:
        reason = unavailable_reason(services, "amqp")
        if reason:
            results.append(Result.skipped(GROUP, "scheduler pass (amqp queue)", "sqlite", reason, "ms"))
        else:
            results += run_backend("sqlite", services.sqlalchemy_url("sqlite", "scheduler_scale_amqp"), "amqp",
                                   services, rounds)
    return results


def main(argv=None) -> int:
    import argparse

    from tabulate import tabulate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 rounds per size instead of 11")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only this back end (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    services = Services.from_environment(database_suffix="_scheduler_scale")
    results = run(services, args.quick, tuple(args.backend or BACKENDS))
    print(tabulate([[r.backend, r.name, r.value, r.unit, r.note] for r in results],
                   headers=["back end", "measurement", "value", "unit", "note"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([r.to_dict() for r in results], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
