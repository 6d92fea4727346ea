"""Several real workers draining one queue at once: every task runs exactly once, and the claims are shared.

The proof comes from the attempts table, not from timing: one attempt per task, all succeeded, nothing left
unfinished, and every worker took part. 2,000 tasks on MariaDB and PostgreSQL (SKIP LOCKED claims); a
smaller run on SQLite, whose writers queue on the database lock instead.
"""

import time

import pytest
import sqlalchemy as sa
from conftest import make_environment
from test_submit_and_run import run_named_workers, submit

from eas_controller.database.schema import attempts, sql_queue, tasks, workers

TASKS = {"mysql": 2000, "postgresql": 2000, "sqlite": 300}
WORKERS = 4


@pytest.fixture(params=["mysql", "postgresql", "sqlite"])
def eas_any(request, tmp_path):
    environment = make_environment(request.param, tmp_path)
    yield environment
    environment.engine.dispose()


def test_four_workers_drain_a_large_loop_exactly_once(eas_any, tmp_path):
    eas = eas_any
    count = TASKS[eas.backend]
    job_id = submit(eas, {"job_name": "drain", "task_list": [
        {"task": "execution_for_loop", "parameter": "i", "values": list(range(count)), "task_list": [{"task": "null"}]},
    ]}, tmp_path)
    names = ["drain-%d" % number for number in range(1, WORKERS + 1)]
    started = time.time()
    run_named_workers(eas, [["--concurrency", "1", "--cpus", "1", "--name", name] for name in names], timeout=300)
    elapsed = time.time() - started

    with eas.engine.connect() as connection:
        job_tasks = sa.select(tasks.c.id).where(tasks.c.job_id == job_id, tasks.c.task_type == "null")
        assert connection.execute(sa.select(sa.func.count()).select_from(job_tasks.subquery())).scalar() == count
        per_task = connection.execute(
            sa.select(attempts.c.task_id, sa.func.count().label("n")).where(attempts.c.task_id.in_(job_tasks))
            .group_by(attempts.c.task_id)).all()
        attempt_rows = connection.execute(
            sa.select(attempts.c.state, attempts.c.worker_name, attempts.c.worker_id, attempts.c.number,
                      attempts.c.queued_at, attempts.c.started_at, attempts.c.ended_at)
            .where(attempts.c.task_id.in_(job_tasks))).all()
        unfinished = connection.execute(
            sa.select(tasks.c.id, tasks.c.state).where(tasks.c.job_id == job_id, tasks.c.state != "done")).all()
        queue_left = connection.execute(sa.select(sa.func.count()).select_from(sql_queue)).scalar()
        worker_ids = dict(connection.execute(sa.select(workers.c.name, workers.c.id)).all())

    assert len(per_task) == count and {row.n for row in per_task} == {1}
    assert len(attempt_rows) == count
    assert {row.state for row in attempt_rows} == {"succeeded"} and {row.number for row in attempt_rows} == {1}
    assert unfinished == [] and queue_left == 0
    claims = {name: 0 for name in names}
    for row in attempt_rows:
        claims[row.worker_name] += 1
        assert row.worker_id == worker_ids[row.worker_name]
        assert row.queued_at <= row.started_at <= row.ended_at
    # the claims are shared: on MariaDB and PostgreSQL every worker takes part. SQLite serialises its writers
    # and 300 null tasks drain in about a second, within what the first worker claims ahead (up to 100 per
    # slot at a time), so the workers that start after it may find the queue already empty
    if eas.backend != "sqlite":
        assert all(count > 0 for count in claims.values()), claims
    span = max(row.ended_at for row in attempt_rows) - min(row.started_at for row in attempt_rows)
    print("\n%s: %d tasks on %d workers in %.1f s (%.0f tasks/s while running; claims per worker %s)" % (
        eas.backend, count, WORKERS, elapsed, count / span, claims))
