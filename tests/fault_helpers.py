"""Helpers for the tests that run real workers and a real scheduler daemon and then break things.

:class:`Cluster` starts processes (workers, the scheduler) against one test environment and makes sure
they are all gone at the end of the test, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from conftest import PROJECT_ROOT, make_environment


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError("timed out after %g s waiting for %s" % (timeout, what))
        time.sleep(interval)


class Cluster:
    """A test environment plus the processes started on it."""

    def __init__(self, backend: str, tmp_path, **settings):
        self.environment = make_environment(backend, tmp_path, **settings)
        self.engine = self.environment.engine
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []

    # -- processes -------------------------------------------------------------------------------------
    def worker(self, *args: str, name: str = "w") -> subprocess.Popen:
        process = self.environment.start_worker("--name", name, "--poll-interval", "0.1", *args, log_name=name)
        self.processes.append(process)
        return process

    def scheduler(self, interval: float = 0.2) -> subprocess.Popen:
        log_path = os.path.join(str(self.tmp_path), "scheduler-%d.log" % time.time_ns())
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "eas_controller", "schedule_all_waiting_tasks", "--interval", str(interval)],
                cwd=PROJECT_ROOT, env=self.environment.env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        process.log_path = log_path
        self.processes.append(process)
        return process

    def schedule_once(self, *args: str) -> str:
        return self.environment.script("queue_management/schedule_all_waiting_tasks.py", "--once", *args).stdout

    def stop(self, process: subprocess.Popen, timeout: float = 30) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                except ProcessLookupError:
                    pass
                process.wait()
        self.engine.dispose()

    @staticmethod
    def log(process: subprocess.Popen) -> str:
        with open(process.log_path) as handle:
            return handle.read()

    # -- jobs and queries ------------------------------------------------------------------------------
    def submit(self, task_list: list, job_name: str = "faults", working_directory: str = "faults") -> None:
        path = os.path.join(str(self.tmp_path), "%s-%d.json" % (job_name, time.time_ns()))
        with open(path, "w") as handle:
            json.dump(dict(job_name=job_name, working_directory=working_directory, task_list=task_list), handle)
        self.environment.script("job_submission/submit.py", "--tasks", path)

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).all()

    def value(self, sql: str, **params):
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalar()

    def task(self, name: str):
        return self.rows("SELECT * FROM eas_tasks WHERE name = :name", name=name)[0]

    def attempts_of(self, name: str) -> list:
        return self.rows("SELECT a.* FROM eas_attempts a JOIN eas_tasks t ON t.id = a.task_id WHERE t.name = :name "
                         "ORDER BY a.id", name=name)

    def log_lines(self, attempt_id: int) -> list:
        return self.rows("SELECT * FROM eas_log_lines WHERE attempt_id = :id ORDER BY id", id=attempt_id)

    def worker_tasks_finished(self) -> bool:
        return not self.value("SELECT COUNT(*) FROM eas_tasks WHERE is_control = :no AND state NOT IN "
                              "('done', 'failed', 'cancelled')", no=False)

    def product_path(self, relative: str) -> str:
        return os.path.join(self.environment.settings.data_dir, relative)


def process_gone(pid: int) -> bool:
    """No such process any more (a zombie waiting for its parent to reap it counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def cluster_factory(tmp_path):
    """Makes Clusters on request and closes every one after the test."""
    made = []

    def make(backend: str = "sqlite", **settings) -> Cluster:
        cluster = Cluster(backend, tmp_path, **settings)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
