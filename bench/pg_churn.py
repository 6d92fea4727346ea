#!/usr/bin/env python3
"""PostgreSQL: does claiming slow down once many claims have churned through the queue table?

Every claim deletes a row of ``eas_sql_queue``; on PostgreSQL a deleted row stays as a dead tuple (and
dead index entries at the front of the claim index) until (auto)vacuum removes it, and a claim's
``ORDER BY rank, id LIMIT k FOR UPDATE SKIP LOCKED`` starts its index scan exactly there. This measures
the median latency of ``SqlQueue.claim`` (limit 1, 200 claims, each then completed) on a fresh table, then
churns N rows through it the way the queue does (rows enqueued behind a standing backlog of 1,000,
taken from the front in batches of 1,000 with the claim's own ``SKIP LOCKED`` ordering, as fast as the
server allows), and measures again at once. Faster than real claims, so autovacuum has less time to keep
up than in a real run: a worst case. N: quick 10^5, full 10^6.

The schema's own autovacuum settings apply (schema version 6), and the scheduler daemon's queue-table
maintenance (:class:`~eas_controller.scheduler.maintenance.QueueVacuum`) runs alongside, in a thread, at
the daemon's pace (after every pass: ``scheduler_interval``), during the churn and the second measurement,
as it would in a deployment, and the second measurement starts once it has looked at the table after the
churn (within a second); ``--no-scheduler`` leaves it out (autovacuum alone) and measures at once.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import statistics
import threading
import time

from bench.common import Result, Services, percentile, unavailable_reason

#: Fake attempt ids of churned rows start here (real attempts of the benchmark stay far below).
CHURN_ID_BASE = 1_000_000_000


def claim_buffers(engine) -> int:
    """Buffers (8 KiB pages) the claim's first statement reads for one row: the work behind its latency,
    without the machine's noise (``EXPLAIN (ANALYZE, BUFFERS)``, rolled back)."""
    import json

    with engine.connect() as connection:
        plan = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id, attempt_id FROM eas_sql_queue "
            "ORDER BY rank, id LIMIT 1 FOR UPDATE SKIP LOCKED").scalar()
        connection.rollback()
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))


def claim_latency(engine, queue, claims: int = 200, buffers: list | None = None) -> list[float]:
    """Milliseconds of each of ``claims`` single claims (each attempt then completed, as a worker does);
    ``buffers`` gets the first claim statement's buffer count (:func:`claim_buffers`)."""
    from bench.queue_claim import complete, load_queued_attempts, register_worker
    from bench.scale import _finish_job

    job_id = load_queued_attempts(engine, queue, claims)
    if buffers is not None:
        buffers.append(claim_buffers(engine))
    worker = register_worker(engine, "bench-churn")
    timings = []
    while True:
        started = time.perf_counter()
        got = queue.claim(worker, None, 1, 60.0)
        if not got:
            break
        timings.append((time.perf_counter() - started) * 1000)
        complete(engine, worker, got)
    _finish_job(engine, job_id)
    if len(timings) != claims:
        raise RuntimeError("claimed %d of %d queued attempts" % (len(timings), claims))
    return timings


def churn(engine, rows: int, batch: int = 1000, backlog: int = 1000) -> float:
    """Enqueue and take ``rows`` queue rows (behind a standing backlog); leaves the table empty. Rows/s."""
    insert = ("INSERT INTO eas_sql_queue (attempt_id, task_type, rank, enqueued_at) "
              "SELECT g, 'null', 0, %(now)s FROM generate_series(%(first)s, %(last)s) AS g")
    take = ("DELETE FROM eas_sql_queue WHERE id IN (SELECT id FROM eas_sql_queue ORDER BY rank, id "
            "LIMIT %(limit)s FOR UPDATE SKIP LOCKED)")
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        next_id = CHURN_ID_BASE
        cursor.execute(insert, dict(now=time.time(), first=next_id, last=next_id + backlog - 1))
        next_id += backlog
        raw.commit()
        taken = 0
        while taken < rows:
            size = min(batch, rows - taken)
            cursor.execute(insert, dict(now=time.time(), first=next_id, last=next_id + size - 1))
            next_id += size
            raw.commit()
            cursor.execute(take, dict(limit=size))
            taken += cursor.rowcount
            raw.commit()
        cursor.execute(take, dict(limit=backlog))
        raw.commit()
    finally:
        raw.close()
    return rows / (time.perf_counter() - started)


def scheduler_maintenance(engine, interval: float = 0.5):
    """Start what the scheduler daemon does for the queue table after each pass; returns (stop, vacuum)."""
    from eas_controller.scheduler.maintenance import QueueVacuum

    stop, vacuum = threading.Event(), QueueVacuum(engine)

    def loop():
        while not stop.wait(interval):
            vacuum.run_if_due()

    threading.Thread(target=loop, name="queue-vacuum", daemon=True).start()
    return stop, vacuum


def table_stats(engine) -> dict:
    with engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT n_live_tup, n_dead_tup, autovacuum_count, vacuum_count, "
            "pg_relation_size('eas_sql_queue') AS heap_bytes, pg_indexes_size('eas_sql_queue') AS index_bytes "
            "FROM pg_stat_user_tables WHERE relname = 'eas_sql_queue'").mappings().first()
    return dict(row) if row else {}


def run(services: Services, quick: bool = True, rows: int | None = None, claims: int = 200,
        scheduler: bool = True) -> list[Result]:
    from bench.common import fresh_schema
    from eas_controller.queues.sql import SqlQueue

    rows = rows or (100_000 if quick else 1_000_000)
    name = "claim latency after %s claims churned / fresh table" % "{:,}".format(rows)
    reason = unavailable_reason(services, "postgresql")
    if reason:
        return [Result.skipped("pg_churn", name, "postgresql", reason, "ratio")]
    try:
        engine = fresh_schema(services.postgres_url)
        queue = SqlQueue(engine)
        claim_latency(engine, queue, 20)  # warm the connection pool and caches
        buffers: list[int] = []
        fresh = claim_latency(engine, queue, claims, buffers)
        fresh_stats = table_stats(engine)
        stop, vacuum = scheduler_maintenance(engine) if scheduler else (None, None)
        rate = churn(engine, rows)
        churned_at = time.time()
        churned_stats = table_stats(engine)
        if vacuum is not None:  # the daemon's next look at the table after the churn (within a second)
            while vacuum.checked_at <= churned_at and time.time() - churned_at < 10:
                time.sleep(0.05)
        churned = claim_latency(engine, queue, claims, buffers)
        if stop is not None:
            stop.set()
        engine.dispose()
    except Exception as error:
        return [Result("pg_churn", name, "postgresql", None, "ratio", note="failed: %s" % str(error)[:300])]
    fresh_ms, churned_ms = statistics.median(fresh), statistics.median(churned)
    extra = dict(fresh_p90_ms=round(percentile(fresh, 0.9), 3), churned_p90_ms=round(percentile(churned, 0.9), 3),
                 fresh_claim_buffers=buffers[0], churned_claim_buffers=buffers[1], churn_rows_per_s=round(rate),
                 fresh_table=fresh_stats, churned_table=churned_stats,
                 scheduler_maintenance=scheduler, scheduler_vacuums=vacuum.vacuums if vacuum else 0)
    return [
        Result("pg_churn", "claim latency, fresh queue table (median of %d)" % claims, "postgresql", fresh_ms, "ms",
               processes=1, jobs=claims, extra=extra),
        Result("pg_churn", "claim latency after %s claims churned (median of %d)" % ("{:,}".format(rows), claims),
               "postgresql", churned_ms, "ms", processes=1, jobs=rows,
               note="dead tuples at measurement: %s; scheduler vacuums: %s" % (
                   churned_stats.get("n_dead_tup", "?"), extra["scheduler_vacuums"] if scheduler else "off"), extra=extra),
        Result("pg_churn", name, "postgresql", churned_ms / fresh_ms, "ratio", processes=1, jobs=rows, extra=extra),
    ]


def main(argv=None) -> int:
    import argparse

    from bench.common import report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="churn 10^5 rows instead of 10^6")
    parser.add_argument("--rows", type=int, help="rows to churn through the queue table")
    parser.add_argument("--claims", type=int, default=200, help="claims timed on each table (default 200)")
    parser.add_argument("--no-scheduler", action="store_true",
                        help="without the scheduler daemon's queue-table maintenance (autovacuum alone)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = run(Services.from_environment(database_suffix="_pg_churn"), args.quick, args.rows, args.claims,
                  scheduler=not args.no_scheduler)
    return report(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
