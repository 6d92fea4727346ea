"""Prometheus metrics, scraped over HTTP from a real scheduler and a real worker during a run, and parsed
with prometheus_client's own parser: every count matches the tables."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import sqlalchemy as sa
from conftest import PROJECT_ROOT, make_environment

from prometheus_client.parser import text_string_to_metric_families
from bench.private_servers import free_port

WAIT_S = 120  # longest wait for the run to reach a step (a generous bound on a busy machine, not a measurement)


def scrape(port: int) -> dict:
    """{sample name: {frozenset of labels: value}} from the endpoint's text format."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as response:
        text = response.read().decode()
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def served_names(port: int) -> set:
    """Every family and sample name the endpoint serves (a family may have no sample yet)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    return {family.name for family in families} | {sample.name for family in families for sample in family.samples}


def documented_names() -> set:
    """The eas_* names that docs/metrics.md and the Grafana dashboard use."""
    import re

    text = ""
    for name in ("metrics.md", "grafana_dashboard.json"):
        with open(os.path.join(PROJECT_ROOT, "docs", name)) as handle:
            text += handle.read()
    return set(re.findall(r"\beas_[a-z_]+[a-z]", text)) - {"eas_controller", "eas_scheduler", "eas_workers_"}


def by_labels(samples: dict, name: str, *labels: str) -> dict:
    return {tuple(dict(key)[label] for label in labels): value for key, value in samples.get(name, {}).items()}


def database_view(engine) -> dict:
    """What the scheduler's endpoint should say, read here with plain SQL."""
    with engine.connect() as connection:
        def rows(query):
            return {tuple(row[:-1]): row[-1] for row in connection.execute(sa.text(query))}

        return dict(
            tasks=rows("SELECT state, task_type, COUNT(*) FROM eas_tasks GROUP BY state, task_type"),
            attempts=rows("SELECT state, COUNT(*) FROM eas_attempts GROUP BY state"),
            queued=rows("SELECT task_type, queue, COUNT(*) FROM eas_attempts WHERE state = 'queued' "
                        "GROUP BY task_type, queue"),
            workers=rows("SELECT state, COUNT(*) FROM eas_workers GROUP BY state"),
        )


def scheduler_view(samples: dict) -> dict:
    return dict(
        tasks=by_labels(samples, "eas_tasks", "state", "task_type"),
        attempts=by_labels(samples, "eas_attempts", "state"),
        queued=by_labels(samples, "eas_queue_depth", "task_type", "queue"),
        workers=by_labels(samples, "eas_workers", "state"),
    )


def worker_attempts(engine, worker_name: str) -> dict:
    with engine.connect() as connection:
        claimed = connection.execute(sa.text("SELECT COUNT(*) FROM eas_attempts WHERE worker_name = :name"),
                                     {"name": worker_name}).scalar()
        finished = {(row[0], row[1]): (row[2], row[3]) for row in connection.execute(sa.text(
            "SELECT state, task_type, COUNT(*), SUM(wall_s) FROM eas_attempts WHERE worker_name = :name "
            "AND state IN ('succeeded', 'failed') GROUP BY state, task_type"), {"name": worker_name})}
    return dict(claimed=claimed, finished=finished)


def worker_view(samples: dict) -> dict:
    counts = by_labels(samples, "eas_attempts_finished_total", "state", "task_type")
    sums = by_labels(samples, "eas_attempt_duration_seconds_sum", "state", "task_type")
    return dict(claimed=samples["eas_attempts_claimed_total"][frozenset()],
                finished={key: (count, sums[key]) for key, count in counts.items()})


def wait_until(condition, what: str):
    deadline = time.time() + WAIT_S
    last = None
    while time.time() < deadline:
        ok, last = condition()
        if ok:
            return last
        time.sleep(0.2)
    raise AssertionError("timed out waiting for %s; last: %r" % (what, last))


def same_worker_counts(expected: dict, scraped: dict) -> bool:
    if expected["claimed"] != scraped["claimed"] or set(expected["finished"]) != set(scraped["finished"]):
        return False
    return all(count == scraped["finished"][key][0] and wall == pytest.approx(scraped["finished"][key][1])
               for key, (count, wall) in expected["finished"].items())


def test_metrics_scraped_during_a_run_match_the_tables(backend, tmp_path):
    watch_a_run(make_environment(backend, tmp_path, lease_seconds=2.0), tmp_path)


def test_metrics_match_the_tables_with_the_amqp_queue(tmp_path):
    """Queue depth and claims are read from the attempts, so they hold with RabbitMQ carrying the messages."""
    watch_a_run(make_environment("mysql", tmp_path, queue="amqp", lease_seconds=2.0), tmp_path, queue="amqp")


def watch_a_run(eas, tmp_path, queue: str = "sql") -> None:
    chain = {"job_name": "watched", "task_list": (
        [{"task": "null", "name": "quick_%d" % index} for index in range(6)]
        + [{"task": "error", "name": "broken_%d" % index, "message": "on purpose"} for index in range(2)]
        + [{"task": "sleep", "name": "long", "seconds": 600},
           {"task": "shell", "name": "unclaimed", "command": "true"}])}  # no worker here runs shell: it stays queued
    path = tmp_path / "watched.json"
    path.write_text(json.dumps(chain))
    eas.script("job_submission/submit.py", "--tasks", str(path))
    scheduler_port, worker_port = free_port(), free_port()
    log_path = tmp_path / "scheduler.log"
    with open(log_path, "w") as log_file:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "eas_controller", "schedule_all_waiting_tasks", "--interval", "0.2",
             "--metrics-port", str(scheduler_port)], cwd=PROJECT_ROOT, env=eas.env, stdout=log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    worker = eas.start_worker("--name", "watched-worker", "--concurrency", "2", "--cpus", "2",
                              "--task-types", "null,error,sleep",
                              "--metrics-port", str(worker_port))
    try:
        def long_task_running():
            view = database_view(eas.engine)
            finished = sum(count for (state, _type), count in view["tasks"].items() if state in ("done", "failed"))
            return (view["tasks"].get(("running", "sleep")) == 1 and finished == 8
                    and view["queued"] == {("shell", queue): 1}), view

        wait_until(long_task_running, "the quick tasks to finish while the long one runs")

        def endpoints_agree():
            expected = database_view(eas.engine)
            scraped = scheduler_view(scrape(scheduler_port))
            expected_worker = worker_attempts(eas.engine, "watched-worker")
            scraped_worker = worker_view(scrape(worker_port))
            ok = (scraped == expected == database_view(eas.engine)
                  and same_worker_counts(expected_worker, scraped_worker))
            return ok, (expected, scraped, expected_worker, scraped_worker)

        expected, scraped, expected_worker, scraped_worker = wait_until(endpoints_agree, "the endpoints to agree")
        assert expected["tasks"][("done", "null")] == 6 and expected["tasks"][("failed", "error")] == 2
        assert expected["workers"] == {("running",): 1}
        assert scraped_worker["claimed"] == 9 and scraped_worker["finished"][("failed", "error")][0] == 2
        samples = scrape(worker_port)
        histogram = by_labels(samples, "eas_attempt_duration_seconds_count", "state", "task_type")
        assert histogram == {key: count for key, (count, _wall) in expected_worker["finished"].items()}
        infinite = by_labels(samples, "eas_attempt_duration_seconds_bucket", "state", "task_type", "le")
        assert infinite[("succeeded", "null", "+Inf")] == 6
        assert samples["eas_claim_transactions_total"][frozenset()] >= 1
        assert scrape(scheduler_port)["eas_workers_lost"][frozenset()] == 0
        undocumented = documented_names() - served_names(scheduler_port) - served_names(worker_port)
        assert not undocumented, "documented but not served: %s" % sorted(undocumented)

        # The worker is killed: the scheduler finds the lease expired and the worker lost.
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)

        def lease_expiry_seen():
            expected = database_view(eas.engine)
            samples = scrape(scheduler_port)
            lost = samples["eas_workers_lost"][frozenset()]
            expiries = samples["eas_lease_expiries_total"][frozenset()]
            ok = (expected.get("attempts", {}).get(("stalled",)) == 1 and scheduler_view(samples) == expected
                  == database_view(eas.engine) and lost == 1 and expiries == 1)
            return ok, (expected, scheduler_view(samples), lost, expiries)

        expected, _scraped, _lost, _expiries = wait_until(lease_expiry_seen, "the lease expiry to be counted")
        assert expected["workers"] == {("running",): 1}  # the row still says running: that is what "lost" means
        assert expected["queued"] == {("shell", queue): 1}, expected
    finally:
        for process in (worker, scheduler):
            if process.poll() is None:
                process.kill()
                process.wait(30)
        eas.engine.dispose()
    assert scheduler.returncode is not None
    assert "Traceback" not in log_path.read_text()


def test_metrics_flags_refuse_a_bad_or_taken_port(eas_sqlite):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = eas_sqlite.script("queue_management/schedule_all_waiting_tasks.py", "--once", "--metrics-port",
                                   str(port), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: cannot serve metrics on 127.0.0.1:%d" % port), result.stderr
    result = eas_sqlite.script("worker_orchestration/worker.py", "--metrics-port", "70000", check=False)
    assert result.returncode == 2 and "--metrics-port must be between 1 and 65535" in result.stderr, result.stderr


def test_database_errors_are_counted_on_the_endpoint(tmp_path):
    """A statement that fails on a real database is counted by the process that ran it."""
    from eas_controller import metrics
    from eas_controller.database.engine import make_engine

    engine = make_engine("sqlite:///" + str(tmp_path / "errors.sqlite"))
    port = free_port()
    server = metrics.serve(port, role="worker", engine=engine)
    try:
        before = scrape(port)["eas_database_errors_total"][frozenset({("kind", "error")})]
        with pytest.raises(sa.exc.OperationalError):
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT * FROM no_such_table"))
        after = scrape(port)["eas_database_errors_total"][frozenset({("kind", "error")})]
        assert after == before + 1
    finally:
        server.shutdown()
        engine.dispose()
