#!/usr/bin/env python3
"""The seed controller's claim algorithm, as the baseline our queue must beat.

The seed read the oldest queued row without a lock, then ``UPDATE ... SET claimed_by = me WHERE id = ?
AND queued``, committed, and finally selected the rows this worker had got. It never hands a job out
twice (the conditional UPDATE sees the latest committed row), but every worker races for the same
oldest row, so losers wait on the winner's row lock and come back with nothing. Same one-table queue,
same drivers, same process counts as ``limits.py``; every claim is recorded with its claimer and checked
for duplicates after the run.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

from bench.common import BACKENDS, Result, Services, backend_of, dbapi_connect, unavailable_reason
from bench.limits import DONE, QUEUED, RUNNING, _begin, _commit, _integrity_note, _rollback, _sql, measure_claim_loop

SEED_TABLE = "bench_seed_queue"
CLAIM_ONLY = "seed claim only (no completion)"


def seed_loop(url: str, table: str, claimer: int, complete: bool = True) -> tuple[list[int], dict]:
    """One claimer running the seed's algorithm; returns the ids it got and how often it lost the race.
    ``complete=False``: claims only (the jobs stay running), to measure the claim algorithm alone."""
    sqlite = backend_of(url) == "sqlite"
    connection = dbapi_connect(url)
    cursor = connection.cursor()
    oldest = "SELECT id FROM %s WHERE state = %d ORDER BY id LIMIT 1" % (table, QUEUED)
    take = _sql(url, "UPDATE %s SET state = %d, claimed_by = %%s WHERE id = %%s AND state = %d" % (table, RUNNING, QUEUED))
    mine = _sql(url, "SELECT id FROM %s WHERE claimed_by = %%s AND state = %d" % (table, RUNNING))
    # Claiming only, the jobs stay running: "what did I get" can only ask about the row just tried.
    got_it = _sql(url, "SELECT id FROM %s WHERE id = %%s AND claimed_by = %%s" % table)
    finish = _sql(url, "UPDATE %s SET state = %d WHERE id = %%s AND claimed_by = %%s" % (table, DONE))
    claimed: list[int] = []
    lost = busy = 0
    while True:
        try:
            _begin(cursor, url, immediate=False)
            cursor.execute(oldest)  # no lock: every worker sees the same oldest row
            row = cursor.fetchone()
            if row is None:
                _commit(connection, cursor, url)
                break
            cursor.execute(take, (claimer, row[0]))
            _commit(connection, cursor, url)
        except Exception as error:  # SQLite: the snapshot went stale under us (SQLITE_BUSY); try again
            if not (sqlite and "locked" in str(error)):
                raise
            _rollback(connection, cursor, url)
            busy += 1
            continue
        _begin(cursor, url, immediate=False)
        cursor.execute(*((mine, (claimer,)) if complete else (got_it, (row[0], claimer))))
        got = [found[0] for found in cursor.fetchall()]
        _commit(connection, cursor, url)
        if not got:
            lost += 1
        for job_id in got:
            claimed.append(job_id)
            if not complete:
                continue
            _begin(cursor, url)
            cursor.execute(finish, (job_id, claimer))
            _commit(connection, cursor, url)
    connection.close()
    return claimed, dict(lost_races=lost, busy_retries=busy)


def run(services: Services, quick: bool = True, backends=BACKENDS, process_counts=(1, 2, 4),
        jobs: int | None = None) -> list[Result]:
    jobs = jobs or (2000 if quick else 5000)
    results = []
    name = "seed claim + completion (unlocked select, conditional update)"
    for backend in backends:
        reason = unavailable_reason(services, backend)
        for processes in process_counts:
            if reason:
                for label in (name, CLAIM_ONLY):
                    results.append(Result.skipped("seed", label, backend, reason, "jobs/s", processes=processes))
                continue
            for complete, label in ((True, name), (False, CLAIM_ONLY)):
                measured = measure_claim_loop(
                    services.sqlalchemy_url(backend, "seed"), SEED_TABLE, jobs, processes,
                    lambda url, table, claimer, complete=complete: seed_loop(url, table, claimer, complete),
                    final_state=DONE if complete else RUNNING)
                notes = [_integrity_note(measured), "%d lost races" % measured["extra"].get("lost_races", 0)]
                note = "; ".join(part for part in notes if part)
                results.append(Result("seed", label, backend, measured["rate"], "jobs/s", processes=processes,
                                      jobs=jobs, duplicates=measured["duplicates"], note=note,
                                      extra=dict(elapsed_s=measured["elapsed"], **measured["extra"])))
    return results


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--jobs", type=int, help="jobs per measurement")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only these back ends")
    args = parser.parse_args(argv)
    print_results(run(Services.from_environment(), args.quick, tuple(args.backend or BACKENDS), jobs=args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
