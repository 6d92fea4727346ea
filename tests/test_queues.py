"""The same queue tests on the SQL queue (SQLite, MariaDB, PostgreSQL) and the AMQP queue (RabbitMQ with
SQLite or MariaDB): priority order, exactly-once claiming by several worker processes, a worker killed
between a delivery and its claim, a task longer than the broker's consumer timeout, switching between
the two implementations with work queued, and two schedulers promoting the same ready tasks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from conftest import PROJECT_ROOT, service_url
from eas_controller.database.engine import read_transaction
from eas_controller.database.schema import attempts, sql_queue, tasks
from eas_controller.queues import make_queue
from queue_helpers import (QUEUE_BACKENDS, QUEUE_IDS, assert_each_ran_once, cleanup, environment_for,  # noqa: F401
                           executions, insert_ready_tasks, record_tasks, run_scheduler_until, schedule, stop, submit,
                           task_states, worker_log)

WORKER = dict(id=1, name="test-claimer", host="test", pid=os.getpid())


def broker_depth(environment, task_type: str) -> int | None:
    from eas_controller.queues.amqp import AmqpQueue

    queue = AmqpQueue(environment.engine, environment.settings.amqp_url, environment.settings.amqp_queue_prefix)
    try:
        return queue.broker.depth(task_type)["messages"]
    finally:
        queue.close()


def start_worker(environment, *args, extra_env=None, log_name="worker"):
    """A real worker process, optionally with extra environment variables (the fault-injection hook)."""
    log_path = os.path.join(str(environment.tmp_path), "%s-%d.log" % (log_name, time.time_ns()))
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "eas_controller", "worker", *args], cwd=PROJECT_ROOT,
                                   env=dict(environment.env, **(extra_env or {})), stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    process.log_path = log_path
    return process


@pytest.mark.parametrize("queue_name,backend", QUEUE_BACKENDS, ids=QUEUE_IDS)
def test_claims_follow_priority(queue_name, backend, tmp_path, cleanup):
    environment = environment_for(queue_name, backend, tmp_path)
    cleanup(environment)
    priorities = [0, 3, -2, 5, 1, 3, -5, 0, 2, 4, -1, 5]
    submit(environment, [dict(task="null", name="n%d" % i, priority=p) for i, p in enumerate(priorities)])
    assert schedule(environment) == len(priorities)
    queue = make_queue(environment.settings, environment.engine)
    try:
        first_three = queue.claim(WORKER, ["null"], 3, 60)
        claimed = list(first_three)
        while len(claimed) < len(priorities):
            got = queue.claim(WORKER, ["null"], 1, 60)
            assert len(got) <= 1
            claimed.extend(got)
            assert got, "queue ran dry after %d of %d claims" % (len(claimed), len(priorities))
        assert queue.claim(WORKER, ["null"], 5, 60) == []
    finally:
        queue.close()
    with read_transaction(environment.engine) as connection:
        priority_of = dict(connection.execute(sa.select(tasks.c.id, tasks.c.priority)).all())
    order = [priority_of[claim["task_id"]] for claim in claimed]
    assert sorted(order[:3], reverse=True) == [5, 5, 4]
    assert order[3:] == sorted(order[3:], reverse=True), order
    same = [claim["task_id"] for claim in claimed if priority_of[claim["task_id"]] == 3]
    assert same == sorted(same)  # equal priorities: first submitted, first claimed
    assert len({claim["attempt_id"] for claim in claimed}) == len(priorities)
    assert task_states(environment) == {"running": len(priorities)}


@pytest.mark.parametrize("queue_name,backend", QUEUE_BACKENDS, ids=QUEUE_IDS)
def test_four_workers_claim_2000_tasks_exactly_once(queue_name, backend, tmp_path, cleanup):
    environment = environment_for(queue_name, backend, tmp_path)
    cleanup(environment)
    order_log = str(tmp_path / "ran.log")
    submit(environment, record_tasks(order_log, 2000))
    workers = [environment.start_worker("--concurrency", "1", "--cpus", "1", "--burst", "--poll-interval", "0.2",
                                        "--task-types", "record_order") for _ in range(4)]
    try:
        run_scheduler_until(environment, lambda: all(w.poll() is not None for w in workers), 240, workers)
    finally:
        stop(workers)
    assert all(worker.returncode == 0 for worker in workers), worker_log(workers[0])
    assert_each_ran_once(environment, order_log, 2000)
    by_worker = {}
    for line in open(order_log):
        by_worker[line.split()[2]] = by_worker.get(line.split()[2], 0) + 1
    assert len(by_worker) >= 2, "the work was not shared: %s" % by_worker


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_worker_killed_between_delivery_and_claim(backend, tmp_path, cleanup):
    """EAS_TEST_CRASH_AFTER_DELIVERY=1 makes the worker SIGKILL itself right after RabbitMQ delivered a
    message, before its claim commits: the broker redelivers it and the task runs once, to success."""
    environment = environment_for("amqp", backend, tmp_path)
    cleanup(environment)
    order_log = str(tmp_path / "ran.log")
    submit(environment, record_tasks(order_log, 3))
    assert schedule(environment) == 3
    crashing = start_worker(environment, "--concurrency", "1", "--task-types", "record_order",
                            extra_env={"EAS_TEST_CRASH_AFTER_DELIVERY": "1"}, log_name="crashing")
    assert crashing.wait(60) == -9, worker_log(crashing)
    assert "killing this worker after a delivery" in worker_log(crashing)
    assert executions(order_log) == {}
    assert task_states(environment) == {"queued": 3}
    deadline = time.time() + 30
    while broker_depth(environment, "record_order") != 3:  # the connection died: the broker requeues
        assert time.time() < deadline, "the delivered message did not come back"
        time.sleep(0.2)
    survivor = environment.start_worker("--concurrency", "1", "--burst", "--poll-interval", "0.2")
    try:
        run_scheduler_until(environment, lambda: survivor.poll() is not None, 60, [survivor])
    finally:
        stop([survivor])
    assert_each_ran_once(environment, order_log, 3)
    with read_transaction(environment.engine) as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(attempts)).scalar() == 3


def rabbitmq_version() -> tuple:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(service_url("amqp")))
    try:
        version = connection._impl.server_properties.get("version", b"0")
    finally:
        connection.close()
    version = version.decode() if isinstance(version, bytes) else str(version)
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def unacknowledged(queue_name: str) -> int | None:
    """Messages delivered but not acked in a queue, from rabbitmqctl (None where it cannot be asked)."""
    if not shutil.which("rabbitmqctl"):
        return None
    result = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return None
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue_name:
            return int(parts[1])
    return None


def test_task_longer_than_the_consumer_timeout_is_not_redelivered(tmp_path, cleanup):
    """The queue is declared with a 2 s consumer timeout (effective from RabbitMQ 3.11.15; older brokers
    accept the argument and keep their global 30-minute timeout). The worker acks as soon as its claim
    commits, so nothing stays unacknowledged while the 6 s task runs - which rabbitmqctl confirms - and
    the broker never redelivers it."""
    environment = environment_for("amqp", "sqlite", tmp_path)
    cleanup(environment)
    environment.script("database_initialisation/init_queues.py", "--amqp-url", environment.settings.amqp_url,
                       "--queue-prefix", environment.settings.amqp_queue_prefix, "--consumer-timeout", "2")
    order_log = str(tmp_path / "ran.log")
    submit(environment, record_tasks(order_log, 1, seconds=6) + [dict(task="null")])
    worker = environment.start_worker("--concurrency", "1", "--burst", "--poll-interval", "0.2", "--task-types",
                                      "record_order")
    queue_name = environment.settings.amqp_queue_prefix + "record_order"
    samples = []
    try:
        queue = make_queue(environment.settings, environment.engine)
        from eas_controller.scheduler import Scheduler

        scheduler = Scheduler(environment.engine, queue)
        deadline = time.time() + 60
        while worker.poll() is None:
            scheduler.run_pass()
            if executions(order_log):  # the task runs
                started = float(open(order_log).read().split()[1])
                samples.append((time.time() - started, unacknowledged(queue_name)))
            assert time.time() < deadline, worker_log(worker)
            time.sleep(0.5)
        queue.close()
    finally:
        stop([worker])
    log = worker_log(worker)
    assert worker.returncode == 0, log
    assert executions(order_log) == {"t0": 1}
    with read_transaction(environment.engine) as connection:
        history = connection.execute(sa.select(attempts.c.state).where(attempts.c.task_type == "record_order")).scalars().all()
    assert history == ["succeeded"]
    assert "dropped" not in log and "connection lost" not in log, log
    measured = [count for _age, count in samples if count is not None]
    assert max(age for age, _count in samples) > 3  # beyond the 2 s timeout
    assert all(count == 0 for count in measured), samples
    if not measured:
        assert rabbitmq_version() >= (3, 11, 15), "cannot check unacknowledged messages on this broker"


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_switching_sql_amqp_sql_with_500_queued(backend, tmp_path, cleanup):
    environment = environment_for("sql", backend, tmp_path)
    cleanup(environment)
    order_log = str(tmp_path / "ran.log")
    submit(environment, record_tasks(order_log, 500))
    assert schedule(environment) == 500
    url = environment.settings.amqp_url = service_url("amqp")

    out = environment.script("database_initialisation/init_queues.py", "--amqp-url", url).stdout
    assert "moved 500 queued attempt(s) to RabbitMQ (500 confirmed" in out
    assert "guest:guest" not in out
    environment.settings.queue = "amqp"
    assert broker_depth(environment, "record_order") == 500
    with read_transaction(environment.engine) as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(sql_queue)).scalar() == 0
        assert set(connection.execute(sa.select(attempts.c.queue)).scalars()) == {"amqp"}

    # some of the work runs on RabbitMQ, then the worker is stopped part way
    worker = environment.start_worker("--concurrency", "1", "--task-types", "record_order")
    deadline = time.time() + 60
    while len(executions(order_log)) < 60:
        assert time.time() < deadline and worker.poll() is None, worker_log(worker)
        time.sleep(0.1)
    stop([worker])
    ran_on_amqp = len(executions(order_log))

    with read_transaction(environment.engine) as connection:  # claimed ahead, not started: given back at shutdown
        released = connection.execute(sa.select(attempts.c.error_text).where(attempts.c.state == "cancelled")).scalars().all()
        ready = connection.execute(sa.select(sa.func.count()).select_from(tasks).where(tasks.c.state == "ready")).scalar()
    assert len(released) == ready <= 100  # at most --prefetch (default 100) per slot
    assert all(text.startswith("released: the worker shut down before starting it") for text in released)

    out = environment.script("database_initialisation/init_queues.py", "--queue_implementation", "sql").stdout
    moved = int(re.search(r"moved (\d+) queued attempt", out).group(1))
    assert moved == 500 - ran_on_amqp - len(released), out
    environment.settings.queue = "sql"
    assert broker_depth(environment, "record_order") == 0
    with open(environment.settings.settings_path) as handle:
        assert "queue: sql" in handle.read()

    workers = [environment.start_worker("--concurrency", "1", "--burst", "--poll-interval", "0.2") for _ in range(2)]
    try:
        run_scheduler_until(environment, lambda: all(w.poll() is not None for w in workers), 120, workers)
    finally:
        stop(workers)
    assert_each_ran_once(environment, order_log, 500)


@pytest.mark.parametrize("backend", ["mysql", "postgresql"])
def test_two_schedulers_promote_5000_ready_tasks_once(backend, tmp_path, cleanup):
    environment = environment_for("sql", backend, tmp_path)
    cleanup(environment)
    insert_ready_tasks(environment.engine, 5000)
    path = os.path.join(PROJECT_ROOT, "eas_controller", "queue_management", "schedule_all_waiting_tasks.py")
    schedulers = [subprocess.Popen([path, "--once", "--batch-size", "250"], env=environment.env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0] for process in schedulers]
    assert all(process.returncode == 0 for process in schedulers), outputs
    promoted = [sum(int(n) for n in re.findall(r"promoted (\d+)", output)) for output in outputs]
    assert sum(promoted) == 5000, outputs
    with read_transaction(environment.engine) as connection:
        per_task = connection.execute(sa.select(attempts.c.task_id, sa.func.count()).group_by(attempts.c.task_id)).all()
        rows = connection.execute(sa.select(sql_queue.c.attempt_id)).scalars().all()
        states = connection.execute(sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state)).all()
    assert len(per_task) == 5000 and {count for _task, count in per_task} == {1}
    assert len(rows) == len(set(rows)) == 5000
    assert dict(states) == {"queued": 5000}


class CuttableProxy:
    """A TCP proxy in front of RabbitMQ that the test can cut: every connection through it drops at once,
    and new ones are refused for a while - a broker restart or a network failure, as clients see it."""

    def __init__(self, host: str, port: int):
        import socket
        import threading

        self.target = (host, port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.open = True
        self.sockets: list = []
        self.lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _address = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        self.open = False
        self.cuts += 1
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
            self.sockets = []

    def reopen(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_lost_broker_connection_is_retried(tmp_path, cleanup):
    """Workers and the scheduler reach RabbitMQ through a proxy that drops every connection mid-run and
    refuses new ones for 3 s: nobody crashes, what the scheduler could not publish is published once the
    broker is back, and every task runs exactly once."""
    import urllib.parse

    from eas_controller.queues.amqp import AmqpQueue
    from eas_controller.scheduler import Scheduler

    environment = environment_for("amqp", "sqlite", tmp_path)
    cleanup(environment)
    parsed = urllib.parse.urlparse(environment.settings.amqp_url)
    proxy = CuttableProxy(parsed.hostname or "127.0.0.1", parsed.port or 5672)
    environment.settings.amqp_url = parsed._replace(netloc="%s@127.0.0.1:%d" % (
        parsed.netloc.rpartition("@")[0], proxy.port)).geturl()
    order_log = str(tmp_path / "ran.log")
    submit(environment, record_tasks(order_log, 300), job_name="before")
    queue = AmqpQueue(environment.engine, environment.settings.amqp_url, environment.settings.amqp_queue_prefix)
    queue.repair_grace = 1.0
    scheduler = Scheduler(environment.engine, queue)
    workers = [environment.start_worker("--concurrency", "1", "--burst", "--poll-interval", "0.2") for _ in range(2)]
    try:
        deadline = time.time() + 120
        while len(executions(order_log)) < 60:
            scheduler.run_pass()
            assert time.time() < deadline and all(w.poll() is None for w in workers)
            time.sleep(0.05)
        proxy.cut()
        submit(environment, [dict(task="record_order", name="late%d" % i, order_log=order_log) for i in range(20)],
               job_name="during")
        for _ in range(3):
            scheduler.run_pass()  # promotes; publishing fails: the attempts stay queued in SQL
        with read_transaction(environment.engine) as connection:
            unconfirmed = connection.execute(sa.select(sa.func.count()).select_from(attempts)
                                             .where(attempts.c.queue == "amqp-new")).scalar()
        assert unconfirmed == 20
        time.sleep(3)
        assert all(w.poll() is None for w in workers), "a worker died with the broker connection"
        proxy.reopen()
        while not all(w.poll() is not None for w in workers):
            scheduler.run_pass()
            assert time.time() < deadline, worker_log(workers[0])
            time.sleep(0.05)
    finally:
        stop(workers)
        queue.close()
        proxy.close()
    assert all(w.returncode == 0 for w in workers)
    assert any("RabbitMQ connection lost" in open(w.log_path).read() for w in workers)
    ran = executions(order_log)
    assert len(ran) == 320 and set(ran.values()) == {1}
    assert task_states(environment) == {"done": 320}


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_idle_worker_gets_the_work_a_busy_one_claims_ahead_of(backend, tmp_path, cleanup):
    """A worker that learnt a type is short claims ahead of its one busy slot, without waiting for deliveries,
    and holds at most its claim-ahead (``--prefetch 2``) while a long task of that type runs: a second, idle
    worker runs the rest, and nothing runs twice."""
    environment = environment_for("amqp", backend, tmp_path)
    cleanup(environment)
    order_log = str(tmp_path / "ran.log")

    def items(prefix: str, count: int, seconds: float = 0) -> list:
        return [dict(task="record_order", name="%s%d" % (prefix, n), order_log=order_log, seconds=seconds)
                for n in range(count)]

    def done_by(name: str) -> int:
        with read_transaction(environment.engine) as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(attempts).where(
                attempts.c.worker_name == name, attempts.c.state == "succeeded")).scalar()

    common = ("--concurrency", "1", "--cpus", "1", "--poll-interval", "0.2", "--task-types", "record_order")
    busy = environment.start_worker(*common, "--prefetch", "2", "--name", "busy")
    workers = [busy]
    try:
        submit(environment, items("warm", 30), job_name="warm")  # the busy worker learns the type is short
        run_scheduler_until(environment, lambda: done_by("busy") == 30, 120, workers)
        submit(environment, items("long", 1, seconds=600), job_name="long")
        run_scheduler_until(environment, lambda: executions(order_log).get("long0"), 120, workers)
        submit(environment, items("short", 20), job_name="short")
        workers.append(environment.start_worker(*common, "--name", "idle"))
        run_scheduler_until(environment, lambda: done_by("idle") >= 18, 120, workers)
        ran = executions(order_log)
        assert busy.poll() is None and ran["long0"] == 1
        with read_transaction(environment.engine) as connection:
            rows = connection.execute(sa.select(tasks.c.name, attempts.c.worker_name, attempts.c.state)
                                      .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
                                      .where(tasks.c.name.like("short%"))).all()
    finally:
        stop(workers)
    assert len(rows) <= 20 and len({row.name for row in rows}) == len(rows)  # one attempt per task
    on_busy = [row for row in rows if row.worker_name == "busy"]
    assert len(on_busy) <= 2, on_busy  # held behind the long task: at most the claim-ahead
    assert all(row.state == "running" for row in on_busy)
    assert all(n == 1 for n in ran.values()), ran
