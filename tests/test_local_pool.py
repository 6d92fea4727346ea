"""start_workers.py --count 4 starts a pool in the background (log files, pid file), a pipeline finishes on
it, and stop.py --local stops every worker gracefully and reports it."""

from __future__ import annotations

import os

import psutil

from conftest import PROJECT_ROOT
from fault_helpers import cluster_factory, process_gone, wait_for  # noqa: F401


def all_tasks_done(cluster) -> bool:
    rows = cluster.rows("SELECT state FROM eas_tasks")
    return bool(rows) and {row.state for row in rows} == {"done"}


def test_a_pool_of_four_runs_a_pipeline_and_stops_gracefully(cluster_factory):  # noqa: F811
    cluster = cluster_factory("sqlite")
    environment = cluster.environment
    environment.script("job_submission/submit.py", "--tasks", os.path.join(PROJECT_ROOT, "demo_jobs", "hello_pipeline.json"))
    started = environment.script("worker_orchestration/start_workers.py", "--count", "4", "--grace-period", "5",
                                 "--name-prefix", "pool")
    pid_file = os.path.join(environment.settings.data_dir, "pool", "workers.pid")
    lines = open(pid_file).read().splitlines()
    assert len(lines) == 4 and started.stdout.count("started worker") == 4
    pids = [int(line.split("\t")[0]) for line in lines]
    try:
        assert all(psutil.pid_exists(pid) for pid in pids)
        again = environment.script("worker_orchestration/start_workers.py", "--count", "1", check=False)
        assert again.returncode == 2 and "already running" in again.stderr
        cluster.scheduler()
        wait_for(lambda: all_tasks_done(cluster), 180, "the pipeline to finish on the pool", interval=0.5)
        assert {row.state for row in cluster.rows("SELECT state FROM eas_tasks")} == {"done"}
        registered = {row.name for row in cluster.rows("SELECT name FROM eas_workers")}
        assert registered == {"pool-0", "pool-1", "pool-2", "pool-3"}
        stopped = environment.script("worker_orchestration/stop.py", "--local")
    finally:
        for pid in pids:  # never leave a worker behind, whatever failed above
            if not process_gone(pid):
                psutil.Process(pid).kill()
    assert stopped.stdout.count("stopped after") == 4
    assert "4 worker(s) stopped gracefully, 0 killed" in stopped.stdout
    assert all(process_gone(pid) for pid in pids)
    assert not os.path.exists(pid_file)
    states = {row.state for row in cluster.rows("SELECT state FROM eas_workers")}
    assert states == {"stopped"}  # each worker deregistered itself on SIGTERM
    for index in range(4):
        log = open(os.path.join(environment.settings.data_dir, "pool", "pool-%d.log" % index)).read()
        assert log.strip()
    nothing = environment.script("worker_orchestration/stop.py", "--local", check=False)
    assert nothing.returncode == 2 and nothing.stderr.startswith("error: no local pool to stop")
