#!/usr/bin/env python3
"""PostgreSQL: what idle workers cost the database, polling or listening, and how fast a long-idle one
picks up new work.

Starts N one-slot workers on a PostgreSQL database of its own (no scheduler daemon: this process runs the
scheduling passes, so nothing else talks to the database), lets them idle and counts, over a window, the
transactions the server committed and rolled back in that database (``pg_stat_database`` deltas; every
empty claim is one transaction, a heartbeat another), per worker-second. Two modes, run one after the
other in the same sitting:

- ``poll``: ``idle_after_s`` set beyond the run and ``queue_notifications`` off, so the workers poll every
  ``--poll-interval`` (1 s) as they did before the long idle wait and the listener;
- ``listen``: ``idle_after_s`` 0, so the window starts once their waits have grown to ``idle_poll_max_s``
  (15 s) and only a notification wakes them sooner.

Then, in each mode, the pickup latency: one ``null`` task submitted, a scheduling pass run here (its
commit sends ``NOTIFY eas_queue``), and the time from the end of that pass to the attempt's
``started_at``, a few times. The server's CPU is not measured (the shared server serves others too).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import statistics
import tempfile
import time

from bench.common import Result, Services, unavailable_reason

MODES = {"poll": 10**9, "listen": 0.0}


def transactions(engine) -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()").scalar()


def pickup_latency(fleet, engine, pickups: int) -> list[float]:
    """Seconds from a scheduling pass that queued one task to its attempt's start, ``pickups`` times."""
    import sqlalchemy as sa

    from eas_controller.database.schema import attempts, tasks
    from eas_controller.queues.sql import SqlQueue
    from eas_controller.scheduler.passes import Scheduler

    scheduler = Scheduler(engine, SqlQueue(engine))
    latencies = []
    for _ in range(pickups):
        job_id = fleet.submit([{"task": "null"}])
        scheduler.run_pass()
        promoted = time.time()
        deadline = promoted + 120
        while time.time() < deadline:
            with engine.connect() as connection:
                started = connection.execute(
                    sa.select(attempts.c.started_at).select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
                    .where(tasks.c.job_id == job_id, attempts.c.started_at.is_not(None))).scalar()
            if started is not None:
                latencies.append(started - promoted)
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("the task of job %d did not start within 120 s" % job_id)
        time.sleep(2)  # the others stay long idle; this one is busy again for a minute (its idle_after_s)
    return latencies


def measure(url: str, mode: str, workers: int, window_s: float, pickups: int, settle_s: float | None = None) -> list[Result]:
    from bench.many_workers import Fleet

    idle_after = MODES[mode]
    os.environ["EAS_QUEUE_NOTIFICATIONS"] = "1" if mode == "listen" else "0"  # the workers inherit it
    try:
        fleet = Fleet(url, workers, tempfile.mkdtemp(prefix="eas_bench_idle_"), idle_after=idle_after, scheduler=False)
    finally:
        os.environ.pop("EAS_QUEUE_NOTIFICATIONS", None)
    try:
        # start-up over; in listen mode their waits have grown to the longest
        time.sleep(settle_s if settle_s is not None else 3 if mode == "poll" else 30)
        before, started = transactions(fleet.engine), time.time()
        time.sleep(window_s)
        seconds, count = time.time() - started, transactions(fleet.engine) - before - 1  # less this read's own
        latencies = pickup_latency(fleet, fleet.engine, pickups)
        fleet.check_alive()
    finally:
        fleet.stop()
    facts = dict(mode=mode, idle_after_s=idle_after, seconds=round(seconds, 1), transactions=count,
                 pickups_s=[round(value, 3) for value in latencies])
    return [
        Result("idle_listen", "idle (%s): transactions per worker-second" % mode, "postgresql",
               count / (workers * seconds), "xact/s", processes=workers, extra=facts),
        Result("idle_listen", "idle (%s): pickup after the idle window, median of %d" % (mode, pickups), "postgresql",
               statistics.median(latencies) * 1000, "ms", processes=workers, extra=facts),
    ]


def run(services: Services, workers: int = 10, window_s: float = 15.0, pickups: int = 3,
        modes: tuple = ("poll", "listen"), settle_s: float | None = None) -> list[Result]:
    from bench.common import ensure_database

    reason = unavailable_reason(services, "postgresql")
    if reason:
        return [Result.skipped("idle_listen", "idle workers", "postgresql", reason, "xact/s")]
    ensure_database(services.postgres_url)
    results = []
    for mode in modes:
        try:
            results += measure(services.postgres_url, mode, workers, window_s, pickups, settle_s)
        except Exception as error:
            results.append(Result("idle_listen", "idle (%s)" % mode, "postgresql", None, "xact/s", processes=workers,
                                  note="failed: %s" % str(error)[:300]))
    return results


def main(argv=None) -> int:
    import argparse

    from bench.common import report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=10, help="worker processes (default 10)")
    parser.add_argument("--window", type=float, default=15.0, help="seconds of the idle window (default 15)")
    parser.add_argument("--pickups", type=int, default=3, help="tasks timed from queueing to start (default 3)")
    parser.add_argument("--modes", default="poll,listen", help="comma-separated: poll, listen (default both)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = run(Services.from_environment(database_suffix="_idle_listen"), args.workers, args.window, args.pickups,
                  tuple(mode.strip() for mode in args.modes.split(",") if mode.strip()))
    return report(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
