"""Helpers shared by the queue, recovery and backup tests: environments per queue, submitting, scheduling,
waiting for workers, and checking that every task ran exactly once."""

from __future__ import annotations

import collections
import os
import subprocess
import time

import pytest
import sqlalchemy as sa

from conftest import make_environment, service_url
from eas_controller.database.engine import read_transaction, write_transaction
from eas_controller.database.schema import attempts, jobs, tasks
from eas_controller.queues import make_queue
from eas_controller.scheduler import Scheduler
from eas_controller.submission import submit_chain

#: (queue implementation, SQL back end) pairs the same queue tests run on
QUEUE_BACKENDS = [("sql", "sqlite"), ("sql", "mysql"), ("sql", "postgresql"), ("amqp", "sqlite"), ("amqp", "mysql")]
QUEUE_IDS = ["sql-sqlite", "sql-mariadb", "sql-postgresql", "amqp-sqlite", "amqp-mariadb"]


def environment_for(queue: str, backend: str, tmp_path, **settings):
    """A clean database (and, for AMQP, queues with a prefix of this test's own)."""
    if queue == "amqp":
        service_url("amqp")
    return make_environment(backend, tmp_path, queue=queue, **settings)


def delete_amqp_queues(environment) -> None:
    """Remove every RabbitMQ queue this test's prefix could have made."""
    import pika

    from eas_controller.database.schema import task_types

    with read_transaction(environment.engine) as connection:
        names = connection.execute(sa.select(task_types.c.name)).scalars().all()
    connection = pika.BlockingConnection(pika.URLParameters(environment.settings.amqp_url))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(environment.settings.amqp_queue_prefix + name)
    finally:
        connection.close()


@pytest.fixture
def cleanup():
    """Dispose of environments (and their RabbitMQ queues) made during the test."""
    made = []
    yield made.append
    for environment in made:
        try:
            delete_amqp_queues(environment)
        except Exception:  # noqa: BLE001 - no broker: nothing to delete
            pass
        environment.engine.dispose()


def submit(environment, task_list: list, job_name: str = "job", **chain) -> int:
    job_id, _plan = submit_chain(environment.engine, dict(job_name=job_name, task_list=task_list, **chain), "test")
    return job_id


def record_tasks(order_log: str, count: int, seconds: float = 0, priority=None) -> list:
    items = []
    for number in range(count):
        item = dict(task="record_order", name="t%d" % number, order_log=order_log, seconds=seconds)
        if priority is not None:
            item["priority"] = priority(number)
        items.append(item)
    return items


def schedule(environment, queue=None, rounds: int = 50) -> int:
    """Scheduler passes until nothing more becomes queued; returns how many attempts were queued."""
    own = queue is None
    queue = queue or make_queue(environment.settings, environment.engine)
    scheduler = Scheduler(environment.engine, queue, environment.settings.max_attempts)
    promoted = 0
    try:
        for _ in range(rounds):
            result = scheduler.run_pass()
            promoted += result.promoted
            if not (result.promoted or result.expanded or result.finished_control):
                break
    finally:
        if own:
            queue.close()
    return promoted


def run_scheduler_until(environment, done, timeout: float = 120, processes=()) -> None:
    """Run scheduler passes in this process until ``done()`` is true (workers run as processes)."""
    queue = make_queue(environment.settings, environment.engine)
    scheduler = Scheduler(environment.engine, queue, environment.settings.max_attempts, retry_backoff_s=0.2)
    deadline = time.time() + timeout
    try:
        while not done():
            scheduler.run_pass()
            for process in processes:
                if process.poll() is not None and process.returncode not in (0, None):
                    raise AssertionError("worker exited %s:\n%s" % (process.returncode, worker_log(process)))
            if time.time() > deadline:
                raise AssertionError("not finished within %g s" % timeout)
            time.sleep(0.1)
    finally:
        queue.close()


def worker_log(process) -> str:
    with open(process.log_path) as handle:
        return handle.read()[-5000:]


def wait_for_exit(processes, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    for process in processes:
        try:
            process.wait(max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise AssertionError("worker did not finish in time:\n" + worker_log(process)) from None


def stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def task_states(environment, job_id: int | None = None) -> dict:
    with read_transaction(environment.engine) as connection:
        query = sa.select(tasks.c.state, sa.func.count()).where(tasks.c.is_control.is_(False)).group_by(tasks.c.state)
        if job_id is not None:
            query = query.where(tasks.c.job_id == job_id)
        return dict(connection.execute(query).all())


def attempts_by_task(environment) -> dict[int, list[str]]:
    with read_transaction(environment.engine) as connection:
        rows = connection.execute(sa.select(attempts.c.task_id, attempts.c.state).order_by(attempts.c.id)).all()
    result = collections.defaultdict(list)
    for row in rows:
        result[row.task_id].append(row.state)
    return result


def executions(order_log: str) -> collections.Counter:
    """How many times each record_order task really ran (one line per run)."""
    if not os.path.exists(order_log):
        return collections.Counter()
    with open(order_log) as handle:
        return collections.Counter(line.split()[0] for line in handle if line.strip())


def assert_each_ran_once(environment, order_log: str, count: int) -> None:
    ran = executions(order_log)
    assert len(ran) == count, "%d of %d tasks ran" % (len(ran), count)
    twice = {name: n for name, n in ran.items() if n != 1}
    assert not twice, "tasks that ran more than once: %s" % dict(list(twice.items())[:10])
    states = task_states(environment)
    assert states == {"done": count}, states
    per_task = attempts_by_task(environment)
    assert all(history[-1] == "succeeded" and history.count("succeeded") == 1 for history in per_task.values())


def insert_ready_tasks(engine, count: int, task_type: str = "null", state: str = "ready", job_name: str = "bulk",
                       priority=lambda number: 0) -> int:
    """Tasks written straight into the table (for sizes where submitting a chain would dominate the test)."""
    now = time.time()
    with write_transaction(engine) as connection:
        job_id = connection.execute(jobs.insert().values(name=job_name, source="test", submitted_at=now)).inserted_primary_key[0]
        for start in range(0, count, 1000):
            connection.execute(tasks.insert(), [dict(
                job_id=job_id, chain_path="task_list[%d]" % number, task_type=task_type, is_control=False,
                job_name=job_name, working_directory="", description="{}", metadata="{}", state=state,
                priority=priority(number), unmet_dependencies=1 if state == "waiting" else 0, attempt_count=0,
                created_at=now, updated_at=now) for number in range(start, min(count, start + 1000))])
    return job_id
