"""The recovery scripts on real scenarios, with both queue implementations: each changes what it says, is
idempotent (a second run changes nothing), honours --job-name/--task-type and --dry-run."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import psutil
import pytest
import sqlalchemy as sa

from eas_controller.database.engine import read_transaction, write_transaction
from eas_controller.database.schema import attempts, sql_queue, tasks
from eas_controller.queues.amqp import AmqpQueue
from queue_helpers import (attempts_by_task, cleanup, environment_for, executions, record_tasks,  # noqa: F401
                           run_scheduler_until, schedule, stop, submit, task_states, worker_log)

QUEUES = [("sql", "sqlite"), ("amqp", "sqlite")]
QUEUE_IDS = ["sql", "amqp"]


def carried(environment, task_type: str) -> int:
    """What the queue itself holds for a type: SQL queue rows, or ready RabbitMQ messages."""
    if environment.settings.queue == "sql":
        with read_transaction(environment.engine) as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(sql_queue)
                                      .where(sql_queue.c.task_type == task_type)).scalar()
    queue = AmqpQueue(environment.engine, environment.settings.amqp_url, environment.settings.amqp_queue_prefix)
    try:
        return queue.broker.depth(task_type)["messages"]
    finally:
        queue.close()


def job_states(environment, job_name: str) -> dict:
    with read_transaction(environment.engine) as connection:
        return dict(connection.execute(sa.select(tasks.c.state, sa.func.count()).where(
            tasks.c.job_name == job_name, tasks.c.is_control.is_(False)).group_by(tasks.c.state)).all())


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, "%r not in:\n%s" % (pattern, text)
    return int(match.group(1))


def run_all(environment, timeout: float = 120) -> None:
    workers = [environment.start_worker("--concurrency", "2", "--burst", "--poll-interval", "0.2")]
    try:
        run_scheduler_until(environment, lambda: all(w.poll() is not None for w in workers), timeout, workers)
    finally:
        stop(workers)


def kill_tree(process) -> None:
    """kill -9 a worker and the task processes it started."""
    parent = psutil.Process(process.pid)
    children = parent.children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(10)


def wait_until(condition, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


@pytest.mark.parametrize("queue_name,backend", QUEUES, ids=QUEUE_IDS)
def test_empty_queue_holds_and_releases_a_job(queue_name, backend, tmp_path, cleanup):
    environment = environment_for(queue_name, backend, tmp_path)
    cleanup(environment)
    order_log = str(tmp_path / "ran.log")
    dependent = dict(task="record_order", name="after_t0", order_log=order_log, requires_metadata_from=["t0"])
    submit(environment, record_tasks(order_log, 12) + [dependent], job_name="paused")
    submit(environment, [dict(task="record_order", name="k%d" % i, order_log=order_log) for i in range(5)] +
           [dict(task="null", name="n%d" % i) for i in range(3)], job_name="kept")
    assert schedule(environment) == 20

    out = environment.script("queue_management/empty_queue.py", "--job-name", "paused", "--hold", "--dry-run").stdout
    assert "dry run: would have removed 12 queued attempt(s) of job 'paused'" in out
    assert job_states(environment, "paused") == {"queued": 12, "waiting": 1}

    out = environment.script("queue_management/empty_queue.py", "--job-name", "paused", "--hold").stdout
    assert "removed 12 queued attempt(s) of job 'paused'" in out and "12 task(s) held" in out
    assert "held 1 ready or waiting task(s) as well" in out
    assert job_states(environment, "paused") == {"held": 13}
    assert carried(environment, "record_order") == 5  # only the other job's attempts are left in the queue
    assert carried(environment, "null") == 3
    assert schedule(environment) == 0  # a running scheduler does not queue held tasks
    out = environment.script("queue_management/empty_queue.py", "--job-name", "paused", "--hold").stdout
    assert "removed 0 queued attempt(s)" in out  # idempotent

    out = environment.script("queue_management/empty_queue.py", "--task-type", "null").stdout
    assert "removed 3 queued attempt(s) of task type null" in out and "back to ready" in out
    assert job_states(environment, "kept") == {"queued": 5, "ready": 3}

    out = environment.script("queue_management/empty_queue.py", "--job-name", "paused", "--release").stdout
    assert "released 13 held task(s)" in out
    assert job_states(environment, "paused") == {"ready": 12, "waiting": 1}  # the dependent waits for t0 again
    assert environment.script("queue_management/empty_queue.py", "--release").stdout.startswith("released 0")
    run_all(environment)
    assert job_states(environment, "paused") == {"done": 13} and job_states(environment, "kept") == {"done": 8}
    assert all(count == 1 for count in executions(order_log).values()) and len(executions(order_log)) == 18
    with read_transaction(environment.engine) as connection:
        counts = connection.execute(sa.select(tasks.c.attempt_count).where(
            tasks.c.job_name == "paused", tasks.c.is_control.is_(False))).scalars().all()
    assert counts == [1] * 13  # an attempt that was taken out of the queue never ran: it does not count
    assert all(history == ["cancelled", "succeeded"] for task_id, history in attempts_by_task(environment).items()
               if len(history) > 1)


def test_unknown_task_type_is_a_clear_error(tmp_path, cleanup):
    environment = environment_for("sql", "sqlite", tmp_path)
    cleanup(environment)
    for script in ("queue_management/empty_queue.py", "queue_management/reschedule_all_unfinished_jobs.py",
                   "queue_management/requeue_lost_messages.py", "queue_management/cancel_job.py"):
        result = environment.script(script, "--task-type", "no_such_type", check=False)
        assert result.returncode == 2 and "unknown task type(s) ['no_such_type']" in result.stderr, result.stderr
    result = environment.script("queue_management/cancel_job.py", check=False)
    assert result.returncode == 2 and "--all" in result.stderr


@pytest.mark.parametrize("queue_name,backend", QUEUES, ids=QUEUE_IDS)
def test_reschedule_failed_and_stalled_tasks(queue_name, backend, tmp_path, cleanup):
    environment = environment_for(queue_name, backend, tmp_path, lease_seconds=2.0)
    cleanup(environment)
    flag = tmp_path / "flag"
    order_log = str(tmp_path / "ran.log")
    submit(environment, [dict(task="shell", name="needs_flag", command="test -f %s" % flag)], job_name="flaky")
    submit(environment, record_tasks(order_log, 1, seconds=60), job_name="crashy")
    worker = environment.start_worker("--concurrency", "2", "--poll-interval", "0.2")
    try:
        run_scheduler_until(environment, lambda: job_states(environment, "flaky") == {"failed": 1}
                            and executions(order_log), 60, [worker])
    finally:
        kill_tree(worker)  # the long task's worker dies: its lease runs out
    time.sleep(2.5)
    assert job_states(environment, "crashy") == {"running": 1}

    out = environment.script("queue_management/reschedule_all_unfinished_jobs.py", "--dry-run").stdout
    assert "dry run: would have expired 1 lease(s)" in out and "made ready 1 failed task(s)" in out
    assert job_states(environment, "crashy") == {"running": 1}

    out = environment.script("queue_management/reschedule_all_unfinished_jobs.py", "--job-name", "flaky").stdout
    assert "1 attempt(s) have an expired lease: waiting up to 2 s for their workers to renew them" in out
    # a lost worker is not the task's failure: it is retried whatever max_attempts says
    assert "expired 1 lease(s) (every task; 1 retried, 0 failed for good)" in out
    assert "made ready 1 failed task(s)" in out and "queued 1 new attempt(s)" in out
    assert job_states(environment, "flaky") == {"queued": 1} and job_states(environment, "crashy") == {"ready": 1}

    out = environment.script("queue_management/reschedule_all_unfinished_jobs.py").stdout
    assert "expired 0 lease(s)" in out and "made ready 0 failed task(s), 1 task(s) waiting out a retry backoff" in out
    assert "queued 1 new attempt(s)" in out
    out = environment.script("queue_management/reschedule_all_unfinished_jobs.py").stdout
    assert "made ready 0 failed task(s)" in out and "queued 0 new attempt(s)" in out  # idempotent

    with write_transaction(environment.engine) as connection:  # shorten the long task for its second run
        connection.execute(tasks.update().where(tasks.c.job_name == "crashy", tasks.c.task_type == "record_order")
                           .values(description=sa.func.replace(tasks.c.description, '"seconds": 60', '"seconds": 0')))
    flag.write_text("ok")
    run_all(environment)
    assert job_states(environment, "flaky") == {"done": 1} and job_states(environment, "crashy") == {"done": 1}
    histories = sorted(attempts_by_task(environment).values())
    assert histories == [["failed", "succeeded"], ["stalled", "succeeded"]]


@pytest.mark.parametrize("queue_name,backend", QUEUES, ids=QUEUE_IDS)
def test_requeue_lost_messages(queue_name, backend, tmp_path, cleanup):
    environment = environment_for(queue_name, backend, tmp_path)
    cleanup(environment)
    order_log = str(tmp_path / "ran.log")
    submit(environment, record_tasks(order_log, 10), job_name="lost")
    assert schedule(environment) == 10
    with read_transaction(environment.engine) as connection:
        queued = connection.execute(sa.select(attempts.c.id).order_by(attempts.c.id)).scalars().all()
    # lose 4 entries and add a stale one (for an attempt that is not queued)
    if queue_name == "sql":
        with write_transaction(environment.engine) as connection:
            connection.execute(sql_queue.delete().where(sql_queue.c.attempt_id.in_(queued[:4])))
            connection.execute(sql_queue.insert().values(attempt_id=999999, task_type="record_order", rank=0,
                                                         enqueued_at=time.time()))
    else:
        queue = AmqpQueue(environment.engine, environment.settings.amqp_url, environment.settings.amqp_queue_prefix)
        channel, deliveries = queue.broker.drain(["record_order"])
        for delivery in deliveries:
            if delivery.attempt_id in queued[:4]:
                channel.basic_ack(delivery.tag)  # the broker lost these
        channel.close()
        queue.broker.publish([dict(attempt_id=999999, task_type="record_order", priority=0)])
        queue.close()
    assert carried(environment, "record_order") == 7

    out = environment.script("queue_management/requeue_lost_messages.py", "--dry-run").stdout
    assert "dry run: would have put back 0 lost attempt(s)" in out  # younger than --min-age (30 s)
    out = environment.script("queue_management/requeue_lost_messages.py", "--min-age", "0", "--dry-run").stdout
    assert "would have put back 4 lost attempt(s): %s" % ", ".join(map(str, queued[:4])) in out
    assert carried(environment, "record_order") == 7
    out = environment.script("queue_management/requeue_lost_messages.py", "--min-age", "0", "--job-name", "lost").stdout
    assert "put back 4 lost attempt(s)" in out and "dropped 1" in out
    assert carried(environment, "record_order") == 10
    out = environment.script("queue_management/requeue_lost_messages.py", "--min-age", "0").stdout
    assert "put back 0 lost attempt(s)" in out and "dropped 0" in out  # idempotent
    run_all(environment)
    assert job_states(environment, "lost") == {"done": 10}
    assert sorted(executions(order_log).values()) == [1] * 10


@pytest.mark.parametrize("queue_name,backend", QUEUES, ids=QUEUE_IDS)
def test_cancel_job_stops_its_running_task(queue_name, backend, tmp_path, cleanup):
    """The running attempt is cancelled in SQL; the worker's heartbeat sees it and stops the task, which frees
    its only slot for the next task (another job's), long before the cancelled task would have ended."""
    environment = environment_for(queue_name, backend, tmp_path, lease_seconds=3.0)
    cleanup(environment)
    order_log = str(tmp_path / "ran.log")
    submit(environment, record_tasks(order_log, 1, seconds=300) +
           [dict(task="null", name="n%d" % i) for i in range(4)] +
           [dict(task="write_text", name="later", text="x", outputs={"text": "later.txt"}, requires_metadata_from=["t0"])],
           job_name="doomed")
    worker = environment.start_worker("--concurrency", "1", "--task-types", "record_order", "--poll-interval", "0.2")
    try:
        run_scheduler_until(environment, lambda: executions(order_log), 60, [worker])
        submit(environment, [dict(task="record_order", name="after", order_log=order_log)], job_name="other")
        assert schedule(environment) == 1
        out = environment.script("queue_management/cancel_job.py", "--job-name", "doomed", "--dry-run").stdout
        assert "dry run: would have cancelled 7 unfinished task(s)" in out  # and the chain itself
        out = environment.script("queue_management/cancel_job.py", "--job-name", "doomed").stdout
        assert "cancelled 7 unfinished task(s) of job 'doomed': 4 queued attempt(s) taken out of the queue, 1 " \
               "running attempt(s) told to stop" in out
        assert job_states(environment, "doomed") == {"cancelled": 6}
        assert carried(environment, "null") == 0
        wait_until(lambda: "after" in executions(order_log), 30, "the slot to be freed for the next task")
        assert "was cancelled while it ran" in worker_log(worker)
        out = environment.script("queue_management/cancel_job.py", "--job-name", "doomed").stdout
        assert "cancelled 0 unfinished task(s)" in out  # idempotent
        run_scheduler_until(environment, lambda: job_states(environment, "other") == {"done": 1}, 30, [worker])
    finally:
        stop([worker])
    assert job_states(environment, "doomed") == {"cancelled": 6}
    assert executions(order_log) == {"t0": 1, "after": 1}
    with read_transaction(environment.engine) as connection:
        states = connection.execute(sa.select(attempts.c.state).join(tasks, tasks.c.id == attempts.c.task_id)
                                    .where(tasks.c.job_name == "doomed")).scalars().all()
    assert sorted(states) == ["cancelled"] * 5


@pytest.mark.parametrize("queue_name,backend", QUEUES, ids=QUEUE_IDS)
def test_display_message_queue(queue_name, backend, tmp_path, cleanup):
    environment = environment_for(queue_name, backend, tmp_path)
    cleanup(environment)
    submit(environment, [dict(task="null", name="n%d" % i) for i in range(7)] +
           [dict(task="sleep", name="s%d" % i, seconds=0) for i in range(3)])
    assert schedule(environment) == 10
    time.sleep(0.2)
    rows = json.loads(environment.script("diagnostics/display_message_queue.py", "--format", "json").stdout)
    by_type = {row["task_type"]: row for row in rows}
    assert set(by_type) == {"null", "sleep"}
    assert by_type["null"]["queued"] == 7 and by_type["null"]["in_queue"] == 7 and by_type["null"]["running"] == 0
    assert by_type["sleep"]["queued"] == 3 and by_type["sleep"]["in_queue"] == 3
    assert by_type["null"]["oldest_queued_s"] >= 0.2 and by_type["null"]["queue"] == queue_name
    csv_text = environment.script("diagnostics/display_message_queue.py", "--format", "csv", "--all").stdout
    assert csv_text.splitlines()[0] == "task_type,queue,queued,running,oldest_queued_s,in_queue,consumers"
    assert len(csv_text.splitlines()) > 3  # every registered type
    table = environment.script("diagnostics/display_message_queue.py", "--task-type", "sleep").stdout
    assert "sleep" in table and "null" not in table
