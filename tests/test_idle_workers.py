"""Idle workers: a long-idle worker waits long between polls, and on PostgreSQL the transaction that queues
work wakes it at once (``LISTEN``/``NOTIFY``)."""

from __future__ import annotations

import re
import time

import pytest
from fault_helpers import cluster_factory, wait_for  # noqa: F401 (fixture)


def notifications(log: str) -> int:
    found = re.search(r"woken (\d+) time\(s\) by queue notifications", log)
    assert found, log[-2000:]
    return int(found.group(1))


def test_a_long_idle_worker_on_postgresql_is_woken_by_the_notification_not_by_its_poll(cluster_factory, monkeypatch):
    """Idle from the start (idle_after_s 0) with a 60 s poll: a task queued while it waits can only be picked
    up within the 30 s bound below because the scheduler's transaction notified it."""
    monkeypatch.setenv("EAS_IDLE_AFTER_SECONDS", "0")
    cluster = cluster_factory("postgresql")
    worker = cluster.worker("--concurrency", "1", "--poll-interval", "60", "--idle-poll-max", "60", name="idle")
    wait_for(lambda: "started on" in cluster.log(worker), 30, "the worker to start")
    time.sleep(2)  # its first claim found nothing: it is now in a 60 s idle wait, listening
    cluster.submit([{"task": "null", "name": "late"}])
    cluster.schedule_once()
    wait_for(lambda: cluster.task("late").state == "done", 30, "the notified worker to run the task")
    assert cluster.stop(worker) == 0
    log = cluster.log(worker)
    assert notifications(log) >= 1, log[-2000:]
    assert "1 attempt(s) claimed in 1 claim(s)" in log, log[-2000:]


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_long_idle_worker_without_notifications_still_finds_work_by_polling(cluster_factory, monkeypatch, backend):
    monkeypatch.setenv("EAS_IDLE_AFTER_SECONDS", "0")
    cluster = cluster_factory(backend)
    worker = cluster.worker("--concurrency", "1", "--poll-interval", "0.5", "--idle-poll-max", "2", name="idle")
    wait_for(lambda: "started on" in cluster.log(worker), 30, "the worker to start")
    time.sleep(2)
    cluster.submit([{"task": "null", "name": "late"}])
    cluster.schedule_once()
    wait_for(lambda: cluster.task("late").state == "done", 60, "the polling worker to run the task")
    assert cluster.stop(worker) == 0
    assert notifications(cluster.log(worker)) == 0
