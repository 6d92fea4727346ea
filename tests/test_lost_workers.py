"""Nothing lost by default: a dead worker is not a failed task, and a database outage is not a dead worker.

Real scheduler and worker processes, with the default retry settings (``max_attempts`` 1, ``max_lost_attempts``
3): a worker killed with SIGKILL costs its task one lost attempt, never the task; a task that kills its worker
each time ends failed after three; a database outage longer than the lease stalls nothing; a worker whose
clock is far off is judged on the database server's clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import PROJECT_ROOT, unavailable
from fault_helpers import cluster_factory, wait_for  # noqa: F401 (fixture)
from test_faults import journal_lines, private_mariadb


def states_of(cluster) -> dict:
    return dict(cluster.rows("SELECT state, COUNT(*) FROM eas_tasks WHERE is_control = :no GROUP BY state", no=False))


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_worker_killed_mid_task_costs_the_task_nothing_with_default_settings(cluster_factory, tmp_path, backend):
    cluster = cluster_factory(backend, lease_seconds=2, retry_backoff_s=0.2)  # max_attempts stays 1
    journal = tmp_path / "journal"
    cluster.submit([{"task": "fault_sleep_write", "name": "t%d" % i, "seconds": 1.5, "journal": str(journal)}
                    for i in range(6)])
    cluster.scheduler()
    doomed = cluster.worker("--concurrency", "2", "--cpus", "2", name="doomed")
    wait_for(lambda: len(journal_lines(journal)) >= 2, 30, "the doomed worker to start two tasks")
    doomed.kill()
    doomed.wait()
    cluster.worker("--concurrency", "2", "--cpus", "2", name="survivor")
    wait_for(cluster.worker_tasks_finished, 90, "every task to finish")

    assert states_of(cluster) == {"done": 6}
    lost = cluster.rows("SELECT * FROM eas_attempts WHERE state = 'stalled'")
    assert lost and all(attempt.worker_name == "doomed" for attempt in lost)
    assert cluster.value("SELECT COUNT(*) FROM eas_attempts WHERE state = 'failed'") == 0
    per_task = cluster.rows("SELECT task_id, SUM(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS ok "
                            "FROM eas_attempts GROUP BY task_id")
    assert len(per_task) == 6 and all(row.ok == 1 for row in per_task)
    notes = [line.message for attempt in lost for line in cluster.log_lines(attempt.id) if line.stream == "system"]
    assert any("lost attempts used" in note for note in notes), notes


def test_a_task_that_kills_its_worker_each_time_fails_after_max_lost_attempts(cluster_factory, tmp_path):
    cluster = cluster_factory("sqlite", lease_seconds=1.5, retry_backoff_s=0.1)
    cluster.submit([{"task": "shell", "name": "poison", "command": "kill -9 $PPID; sleep 30"},
                    {"task": "fault_sleep_write", "name": "healthy", "seconds": 0}])
    cluster.scheduler()
    restarts = 0
    deadline = time.time() + 120
    worker = cluster.worker("--concurrency", "1", name="w0")
    while cluster.task("poison").state != "failed":
        assert time.time() < deadline, "the poison task never ended failed"
        if worker.poll() is not None:  # the poison task killed it: the operator's restart loop starts another
            restarts += 1
            worker = cluster.worker("--concurrency", "1", name="w%d" % restarts)
        time.sleep(0.2)

    poison = cluster.task("poison")
    assert poison.error_text.startswith("the worker running it was lost 3 times (max_lost_attempts 3)")
    assert [attempt.state for attempt in cluster.attempts_of("poison")] == ["stalled"] * 3
    assert restarts >= 3
    wait_for(lambda: cluster.task("healthy").state == "done", 60, "the healthy task to run on a later worker")


def test_a_database_outage_of_two_leases_reruns_nothing_and_a_killed_worker_is_still_detected(tmp_path, cluster_factory):
    server = private_mariadb(tmp_path / "mariadb")
    server.create()
    lease = 4.0
    try:
        cluster = cluster_factory("mysql", url=server.url, lease_seconds=lease, retry_backoff_s=0.2)
        journal = tmp_path / "journal"
        cluster.submit([{"task": "fault_sleep_write", "name": "long%d" % i, "seconds": 12, "journal": str(journal)}
                        for i in range(4)])
        cluster.scheduler()
        live = cluster.worker("--concurrency", "4", "--cpus", "4", name="live")
        wait_for(lambda: len(journal_lines(journal)) == 4, 60, "four long tasks to start on the live worker")
        cluster.submit([{"task": "fault_sleep_write", "name": "orphan", "seconds": 30, "journal": str(journal)}],
                       job_name="orphan")
        doomed = cluster.worker("--concurrency", "1", name="doomed")
        wait_for(lambda: len(journal_lines(journal)) == 5, 60, "the doomed worker to start its task")

        server.kill()  # SIGKILL: the database is gone for twice the lease
        outage_started = time.time()
        time.sleep(1)
        doomed.kill()  # dies while nobody can see it
        doomed.wait()
        time.sleep(2 * lease - 1)
        server.start()
        assert time.time() - outage_started >= 2 * lease

        wait_for(lambda: cluster.task("orphan").state == "done", 120, "the dead worker's task to rerun and finish")
        wait_for(cluster.worker_tasks_finished, 120, "every task to finish")
        for name in ("long0", "long1", "long2", "long3"):
            assert [(a.state, a.worker_name) for a in cluster.attempts_of(name)] == [("succeeded", "live")], name
        orphan = cluster.attempts_of("orphan")
        assert [(a.state, a.worker_name) for a in orphan] == [("stalled", "doomed"), ("succeeded", "live")]
        assert cluster.value("SELECT COUNT(*) FROM eas_attempts WHERE state = 'stalled'") == 1
        assert live.poll() is None
    finally:
        server.kill()


def test_a_worker_whose_clock_is_ten_minutes_behind_is_not_taken_for_dead(cluster_factory, tmp_path):
    """Leases are set and judged on the database server's clock, not the worker's nor the scheduler's."""
    library = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
    if not os.path.exists(library):
        unavailable("libfaketime (Debian package faketime) is not installed")
    cluster = cluster_factory("mysql", lease_seconds=2, retry_backoff_s=0.2)
    cluster.submit([{"task": "shell", "name": "slow", "command": "sleep 6"}])
    cluster.scheduler()
    environment = cluster.environment
    original = environment.start_worker

    def skewed_worker(*args, log_name="worker"):
        log_path = str(tmp_path / ("%s.log" % log_name))
        with open(log_path, "w") as log_file:
            # the worker process itself runs with the clock ten minutes behind (a host whose wall clock is
            # wrong still has a steady monotonic clock)
            process = subprocess.Popen([sys.executable, "-m", "eas_controller", "worker", *args], cwd=PROJECT_ROOT,
                                       stdout=log_file, env=dict(environment.env, LD_PRELOAD=library, FAKETIME="-600s",
                                                                 FAKETIME_DONT_FAKE_MONOTONIC="1"),
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        process.log_path = log_path
        return process

    environment.start_worker = skewed_worker
    try:
        behind = cluster.worker("--concurrency", "1", name="behind")
    finally:
        environment.start_worker = original
    wait_for(lambda: cluster.task("slow").state == "done", 60, "the task on the skewed worker to finish")
    assert [(a.state, a.worker_name) for a in cluster.attempts_of("slow")] == [("succeeded", "behind")]
    attempt = cluster.attempts_of("slow")[0]
    assert attempt.started_at < time.time() - 500  # the worker's own clock really was ten minutes behind
    assert behind.poll() is None


def test_a_dead_workers_attempts_go_back_at_once_when_a_worker_starts_on_its_host(cluster_factory, tmp_path):
    """Certain death (the process is gone from this host) does not wait for the lease (here 60 s)."""
    cluster = cluster_factory("sqlite", lease_seconds=60, retry_backoff_s=0.1)
    journal = tmp_path / "journal"
    cluster.submit([{"task": "fault_sleep_write", "name": "t%d" % i, "seconds": 0.01 if i else 30,
                     "journal": str(journal)} for i in range(40)])
    cluster.scheduler()
    doomed = cluster.worker("--concurrency", "1", name="doomed")
    wait_for(lambda: journal_lines(journal), 30, "the doomed worker to start its long task")
    doomed.kill()
    doomed.wait()
    killed_at = time.time()
    cluster.worker("--concurrency", "2", "--cpus", "2", name="successor")
    wait_for(cluster.worker_tasks_finished, 50, "every task to finish well within the 60 s lease")
    assert time.time() - killed_at < 50
    assert states_of(cluster) == {"done": 40}
    lost = cluster.rows("SELECT * FROM eas_attempts WHERE state = 'stalled'")
    assert lost and all("is gone" in attempt.error_text for attempt in lost)
