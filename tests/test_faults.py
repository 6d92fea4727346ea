"""Fault injection with real processes: workers killed with SIGKILL, paused with SIGSTOP past their lease,
stopped with SIGTERM, claims whose reply was lost, and a database server stopped for 20 seconds in the middle
of a 1,000-task run. The promise under test: no task is lost, none completes twice, every failure says why.

The SQL-queue tests run on SQLite and MariaDB. The outage test starts its own MariaDB server (never the
shared one); it is skipped when the server binaries are missing (a failure with EAS_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import psutil
import pytest
import sqlalchemy as sa

from bench.private_servers import PrivateMariaDB, PrivateRabbitMQ
from conftest import unavailable
from fault_helpers import Cluster, cluster_factory, process_gone, wait_for  # noqa: F401 (fixture)

SQL_QUEUE_BACKENDS = ["sqlite", "mysql"]


def journal_lines(path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def pause_outside_transactions(cluster: Cluster, process: subprocess.Popen, attempt_id: int) -> None:
    """SIGSTOP ``process`` at a moment it holds no lock the others need (a paused transaction would block them,
    which is a different fault from the one under test)."""
    while True:
        process.send_signal(signal.SIGSTOP)
        if cluster.environment.backend == "sqlite":
            connection = sqlite3.connect(cluster.engine.url.database, timeout=0.2)
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.rollback()
                return
            except sqlite3.OperationalError:
                pass
            finally:
                connection.close()
        else:
            try:
                with cluster.engine.begin() as connection:
                    connection.execute(sa.text("SELECT id FROM eas_attempts WHERE id = :id FOR UPDATE NOWAIT"),
                                       dict(id=attempt_id))
                    connection.execute(sa.text("SELECT id FROM eas_workers FOR UPDATE NOWAIT"))
                return
            except sa.exc.OperationalError:
                pass
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)


def start_long_task(cluster_factory, tmp_path, backend: str, name: str, seconds: float, worker_name: str):
    """A short-lease cluster running one ``fault_sleep_write`` task on a first worker; returns (cluster, journal,
    that worker) once the task has started."""
    cluster = cluster_factory(backend, lease_seconds=3, max_attempts=3, retry_backoff_s=0.2)
    journal = tmp_path / "journal"
    cluster.submit([{"task": "fault_sleep_write", "name": name, "seconds": seconds, "journal": str(journal),
                     "outputs": {"text": name + ".txt"}}])
    cluster.scheduler()
    worker = cluster.worker("--concurrency", "1", name=worker_name)
    wait_for(lambda: journal_lines(journal), 30, "the task to start on the first worker")
    return cluster, journal, worker


# -- a worker dies ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_a_task_of_a_worker_killed_with_sigkill_reruns_on_another_worker(cluster_factory, tmp_path, backend):
    cluster, journal, doomed = start_long_task(cluster_factory, tmp_path, backend, "long", 4, "doomed")
    task_processes = psutil.Process(doomed.pid).children(recursive=True)
    doomed.kill()
    doomed.wait()
    survivor = cluster.worker("--concurrency", "1", name="survivor")
    wait_for(lambda: cluster.task("long").state == "done", 60, "the task to finish on the second worker")

    first, second = cluster.attempts_of("long")
    assert first.state == "stalled" and first.worker_name == "doomed"
    # the survivor, starting on the same host, found the doomed worker's process gone: no wait for the lease
    assert "worker doomed" in first.error_text and "is gone: its process no longer exists" in first.error_text
    assert second.state == "succeeded" and second.worker_name == "survivor"
    assert cluster.value("SELECT COUNT(*) FROM eas_attempts WHERE state = 'succeeded'") == 1
    assert [line[1] for line in journal_lines(journal)] == [str(first.id), str(second.id)]
    notes = [line.message for line in cluster.log_lines(first.id) if line.stream == "system"]
    assert notes[0].startswith("attempt 1 stalled: worker doomed") and "retried" in notes[1]
    assert cluster.value("SELECT state FROM eas_workers WHERE name = 'doomed'") == "stopped"
    with open(cluster.product_path("faults/long.txt")) as handle:
        assert handle.read() == "made by attempt %d\n" % second.id
    # the killed worker's task process did not outlive it
    wait_for(lambda: all(process_gone(process.pid) for process in task_processes), 10, "the orphaned task process to die")
    assert survivor.poll() is None


@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_a_worker_paused_past_its_lease_finds_its_results_discarded(cluster_factory, tmp_path, backend):
    cluster, journal, paused = start_long_task(cluster_factory, tmp_path, backend, "contested", 3, "paused")
    first_id = int(journal_lines(journal)[0][1])
    pause_outside_transactions(cluster, paused, first_id)  # its task process keeps running and finishes
    wait_for(lambda: cluster.attempts_of("contested")[0].state == "stalled", 30, "the lease to expire")
    cluster.worker("--concurrency", "1", name="second")
    wait_for(lambda: cluster.task("contested").state == "done", 60, "the second attempt to finish")
    second_id = cluster.attempts_of("contested")[1].id
    paused.send_signal(signal.SIGCONT)
    wait_for(lambda: "lost ownership of attempt %d" % first_id in cluster.log(paused), 30,
             "the resumed worker to notice it lost the attempt")

    first, second = cluster.attempts_of("contested")
    assert (first.id, first.state, first.worker_name) == (first_id, "stalled", "paused")
    assert (second.id, second.state, second.worker_name) == (second_id, "succeeded", "second")
    task = cluster.task("contested")
    assert task.state == "done" and task.attempt_count == 2
    with open(cluster.product_path("faults/contested.txt")) as handle:
        assert handle.read() == "made by attempt %d\n" % second_id
    versions = cluster.rows("SELECT * FROM eas_product_versions")
    assert [version.attempt_id for version in versions] == [second_id]
    metadata = cluster.rows("SELECT * FROM eas_metadata WHERE task_id = :id", id=task.id)
    assert [(row.key, row.value, row.attempt_id) for row in metadata] == [("made_by_attempt", str(second_id), second_id)]
    def ownership_note_recorded() -> bool:  # the worker writes the note to its log file before the database
        notes = [line.message for line in cluster.log_lines(first_id) if line.stream == "worker"]
        return any(note.startswith("lost ownership of attempt %d" % first_id) and "discarded" in note for note in notes)

    wait_for(ownership_note_recorded, 30, "the lost-ownership note in the attempt's log lines")
    assert not any(line.attempt_id == first_id for line in cluster.rows(
        "SELECT * FROM eas_log_lines WHERE created_at > :after", after=second.ended_at) if line.stream != "worker")
    wait_for(lambda: not os.path.exists(cluster.product_path("scratch/attempt_%d" % first_id)), 10,
             "the loser's staged files to be removed")
    assert paused.poll() is None  # it carries on serving


# -- shutdown --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_sigterm_lets_running_tasks_finish_and_claims_nothing_more(cluster_factory, tmp_path, backend):
    cluster = cluster_factory(backend)
    journal = tmp_path / "journal"
    cluster.submit([{"task": "fault_sleep_write", "name": "t%d" % i, "seconds": 2, "journal": str(journal)}
                    for i in range(4)])
    cluster.schedule_once()
    worker = cluster.worker("--concurrency", "2", "--cpus", "2", "--grace-period", "30")
    wait_for(lambda: len(journal_lines(journal)) == 2, 30, "two tasks to start")
    worker.terminate()
    assert worker.wait(30) == 0
    assert "SIGTERM received: no new claims; running attempts get 30 s to finish" in cluster.log(worker)
    states = cluster.rows("SELECT a.state, COUNT(*) AS n FROM eas_attempts a GROUP BY a.state")
    assert {row.state: row.n for row in states} == {"succeeded": 2, "queued": 2}
    assert cluster.value("SELECT COUNT(*) FROM eas_tasks WHERE state = 'failed'") == 0
    assert cluster.value("SELECT state FROM eas_workers") == "stopped"


@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_after_the_grace_period_running_tasks_are_stopped_and_released_not_failed(cluster_factory, tmp_path, backend):
    cluster = cluster_factory(backend)
    journal = tmp_path / "journal"
    cluster.submit([{"task": "fault_sleep_write", "name": "endless", "seconds": 300, "journal": str(journal)}])
    cluster.schedule_once()
    worker = cluster.worker("--concurrency", "1", "--grace-period", "1")
    wait_for(lambda: journal_lines(journal), 30, "the task to start")
    task_processes = psutil.Process(worker.pid).children(recursive=True)
    worker.terminate()
    assert worker.wait(30) == 0
    assert "grace period over: stopping 1 running attempt(s) and releasing them" in cluster.log(worker)
    attempt = cluster.attempts_of("endless")[0]
    assert attempt.state == "cancelled" and attempt.error_text.startswith("released: the worker shut down")
    task = cluster.task("endless")
    assert task.state == "ready" and task.attempt_count == 0 and task.error_text is None
    assert any("released back to the queue" in line.message for line in cluster.log_lines(attempt.id))
    assert all(process_gone(process.pid) for process in task_processes)
    cluster.schedule_once()  # back in the queue: the next worker will get it
    assert [a.state for a in cluster.attempts_of("endless")] == ["cancelled", "queued"]


def test_a_claim_whose_reply_was_lost_goes_back_to_the_queue(cluster_factory):
    cluster = cluster_factory("sqlite", lease_seconds=1.5)
    cluster.submit([{"task": "fault_sleep_write", "name": "orphan"}])
    cluster.schedule_once()
    worker = cluster.worker("--task-types", "null", name="forgetful")
    worker_id = wait_for(lambda: cluster.value("SELECT id FROM eas_workers WHERE name = 'forgetful'"), 10, "the worker")
    attempt_id = cluster.attempts_of("orphan")[0].id
    now = time.time()
    with cluster.engine.begin() as connection:  # what a claim commits, when the worker never hears of it
        connection.exec_driver_sql("DELETE FROM eas_sql_queue")
        connection.execute(sa.text(
            "UPDATE eas_attempts SET state = 'running', worker_id = :w, worker_name = 'forgetful', started_at = :t, "
            "lease_expires_at = :lease WHERE id = :id"), dict(w=worker_id, t=now - 5, lease=now + 600, id=attempt_id))
        connection.exec_driver_sql("UPDATE eas_tasks SET state = 'running' WHERE name = 'orphan'")
    wait_for(lambda: cluster.attempts_of("orphan")[0].state == "cancelled", 10, "the heartbeat to release the claim")
    attempt = cluster.attempts_of("orphan")[0]
    assert "never received this claim" in attempt.error_text
    assert cluster.task("orphan").state == "ready" and cluster.task("orphan").attempt_count == 0
    assert "claim's reply was lost with the database connection: released back to the queue" in cluster.log(worker)


# -- the database goes away ----------------------------------------------------------------------------------------

def private_mariadb(folder) -> PrivateMariaDB:
    """A throw-away MariaDB server the test may kill and start, reached with the test URL's driver (mysql://
    picks mysqlclient when it imports), so outages are tried with both drivers."""
    driver = sa.engine.make_url(os.environ.get("EAS_TEST_MYSQL_URL") or "mysql+pymysql://").drivername
    server = PrivateMariaDB(folder, driver=driver, buffer_pool="64M")
    if server.missing:
        unavailable(server.missing)
    return server


def test_a_1000_task_run_survives_a_20_second_database_outage(tmp_path, cluster_factory):
    server = private_mariadb(tmp_path / "mariadb")
    server.create()
    cluster = None
    try:
        cluster = cluster_factory("mysql", url=server.url, max_attempts=1)
        journal = tmp_path / "journal"
        cluster.submit([{"task": "execution_for_loop", "parameter": "i", "linear_range": [0, 999, 1000], "task_list": [
            {"task": "fault_sleep_write", "seconds": 0.02, "journal": str(journal)}]}], job_name="outage")
        scheduler = cluster.scheduler(interval=0.2)
        workers = [cluster.worker("--concurrency", "2", "--cpus", "2", name="w%d" % i) for i in range(2)]
        wait_for(lambda: len(journal_lines(journal)) >= 200, 120, "the run to be well under way")
        server.kill()  # SIGKILL: transactions in flight are lost, as in a crash
        killed_at = time.time()
        done_before = len(journal_lines(journal))
        time.sleep(20)
        server.start()
        assert time.time() - killed_at >= 20
        wait_for(cluster.worker_tasks_finished, 240, "the run to complete after the outage", interval=1)

        counts = dict(cluster.rows("SELECT state, COUNT(*) FROM eas_tasks WHERE is_control = 0 GROUP BY state"))
        assert counts == {"done": 1000}, counts
        per_task = cluster.rows("SELECT task_id, SUM(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS ok "
                                "FROM eas_attempts GROUP BY task_id")
        assert len(per_task) == 1000 and all(row.ok == 1 for row in per_task)
        runs = journal_lines(journal)
        assert {line[0] for line in runs} == {str(row.task_id) for row in per_task}
        assert done_before < 1000  # the outage really came in the middle of the run
        for process in workers + [scheduler]:
            assert process.poll() is None, "a process died in the outage:\n" + cluster.log(process)[-3000:]
        assert "database unavailable" in "".join(cluster.log(process) for process in workers + [scheduler])
    finally:
        if cluster is not None:
            cluster.close()  # the workers go before the server
        server.kill()


# -- the broker goes away -------------------------------------------------------------------------------------------

def test_a_1000_task_run_on_the_amqp_queue_survives_a_20_second_broker_outage(tmp_path, cluster_factory):
    broker = PrivateRabbitMQ()
    if broker.missing:
        unavailable(broker.missing)
    cluster = None
    try:
        broker.create()
        cluster = cluster_factory("mysql", max_attempts=1)
        cluster.environment.settings.queue = "amqp"
        cluster.environment.settings.amqp_url = broker.url
        journal = tmp_path / "journal"
        cluster.submit([{"task": "execution_for_loop", "parameter": "i", "linear_range": [0, 999, 1000], "task_list": [
            {"task": "fault_sleep_write", "seconds": 0.02, "journal": str(journal)}]}], job_name="broker-outage")
        scheduler = cluster.scheduler(interval=0.2)
        workers = [cluster.worker("--concurrency", "2", "--cpus", "2", name="w%d" % i) for i in range(2)]
        wait_for(lambda: len(journal_lines(journal)) >= 200, 120, "the run to be well under way")
        broker.stop()
        stopped_at = time.time()
        done_before = len(journal_lines(journal))
        time.sleep(max(0.0, 20 - (time.time() - stopped_at)))
        broker.start()
        wait_for(cluster.worker_tasks_finished, 240, "the run to complete after the outage", interval=1)

        counts = dict(cluster.rows("SELECT state, COUNT(*) FROM eas_tasks WHERE is_control = 0 GROUP BY state"))
        assert counts == {"done": 1000}, counts
        per_task = cluster.rows("SELECT task_id, SUM(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS ok "
                                "FROM eas_attempts GROUP BY task_id")
        assert len(per_task) == 1000 and all(row.ok == 1 for row in per_task)
        assert {line[0] for line in journal_lines(journal)} == {str(row.task_id) for row in per_task}
        assert done_before < 1000  # the outage really came in the middle of the run
        for process in workers + [scheduler]:
            assert process.poll() is None, "a process died in the outage:\n" + cluster.log(process)[-3000:]
    finally:
        if cluster is not None:
            cluster.close()
        broker.remove()
