"""The benchmarks in bench/ run with tiny sizes and produce well-formed results, so they cannot rot.

No timing is asserted: only that each benchmark runs to the end on every reachable back end, records
no duplicate claims and returns results of the agreed shape. They use databases of their own
(``<test database>_bench``, else ``eas_bench_smoke``), never the test databases themselves.
"""

import json
import os
import subprocess

import pytest

from conftest import PROJECT_ROOT, REQUIRE_SERVICES

from bench import end_to_end, idle_listen, limits, many_workers, peers, pg_churn, queue_claim, run_all, scale, seed_claim
from bench.common import Result, Services, is_well_formed, unavailable_reason

REQUIRED = ("mariadb", "postgresql", "amqp")  # what CI provides; Redis (for RQ) is optional


@pytest.fixture(scope="module")
def services():
    """Databases of the benchmarks' own, named after the tester's test databases (each engineer and CI
    exports their own ``EAS_TEST_*_URL``), so two test runs at once never share one."""
    services = Services.from_environment(database_suffix="_smoke")
    for variable, attribute in (("EAS_TEST_MYSQL_URL", "mysql_url"), ("EAS_TEST_POSTGRES_URL", "postgres_url")):
        if os.environ.get(variable) and not os.environ.get(variable.replace("TEST", "BENCH")):
            setattr(services, attribute, os.environ[variable] + "_bench")
    return services


def check(results, expect_groups=None):
    assert results, "a benchmark produced no results"
    for result in results:
        assert isinstance(result, Result)
        record = result.to_dict()
        assert is_well_formed(record), record
        json.dumps(record)  # what run_all writes
        if result.duplicates is not None:
            assert result.duplicates == 0, record
        assert not result.note.startswith("failed"), record
        if REQUIRE_SERVICES and result.backend in REQUIRED:
            assert result.value is not None, record
        if expect_groups:
            assert result.group in expect_groups


def test_limits(services):
    results = limits.run_sql_limits(services, process_counts=(1, 2), jobs=40, batches=(1, 5))
    results += limits.run_rabbitmq_limits(services, messages=30, consumer_counts=(1, 2))
    check(results, {"limits"})
    measured = [r for r in results if r.value is not None and r.backend != "amqp"]
    assert all(r.jobs == 40 and "never claimed" not in r.note for r in measured)
    assert {r.backend for r in results} == {"mariadb", "postgresql", "sqlite", "amqp"}


def test_seed_claim(services):
    results = seed_claim.run(services, process_counts=(1, 2), jobs=40)
    check(results, {"seed"})
    assert len(results) == 12  # 3 back ends x 2 process counts x (claim + completion, claim only)
    assert sum("claim only" in r.name for r in results) == 6


def test_queue_claim(services):
    results = queue_claim.run(services, process_counts=(2,), jobs=20, limits=(1, 3))
    check(results, {"ours"})
    sql = [r for r in results if "SQL" in r.name]
    assert len(sql) == 9  # 3 back ends x (1 and 3 per claim with completion, 3 per claim claiming only)
    assert sum("claim only" in r.name for r in sql) == 3
    if queue_claim.amqp_queue_available():
        assert any("AMQP" in r.name and r.value is not None for r in results) or not REQUIRE_SERVICES
    else:
        assert all(r.note.startswith("skipped") for r in results if "AMQP" in r.name)


def test_end_to_end_with_real_processes(services):
    backend = "sqlite" if unavailable_reason(services, "mariadb") and not REQUIRE_SERVICES else "mariadb"
    results = end_to_end.throughput(services, backend, 12, memory=True)
    results += end_to_end.latency(services, "sqlite", 3)
    check(results)
    throughput = results[0]
    assert throughput.group == "end_to_end" and throughput.duplicates == 0 and throughput.note == ""
    assert any(r.group == "memory" and r.value > 0 for r in results)
    assert {r.group for r in results} == {"end_to_end", "memory", "latency"}
    (cpu,) = [r for r in results if r.name.startswith("controller CPU per task")]
    assert set(cpu.extra["cpu_ms_per_task"]) == {"workers", "scheduler", "database server"} and cpu.value > 0


def test_peers(services):
    results = peers.run(services, jobs=12, forking_jobs=4)
    check(results, {"peers"})
    assert len(results) == 4  # RQ SimpleWorker and Worker; Celery with its defaults and with acks_late + prefetch 1
    assert sum("Celery" in r.name for r in results) == 2 and any("acks_late" in r.name for r in results)
    for result in results:
        if result.value is not None:
            assert result.jobs in (12, 4)


def test_scale(services):
    results = scale.history_scaling(services, "sqlite", sizes=(1000, 2000), claims=5, promote=20)
    results.append(scale.submit_rate(services, "sqlite", 50))
    if not unavailable_reason(services, "mariadb"):
        results += scale.history_scaling(services, "mariadb", sizes=(1000, 2000), claims=3, promote=10)
    check(results, {"scale"})
    assert len([r for r in results if r.backend == "sqlite"]) == 9


def test_many_workers(services):
    results = many_workers.run(services, workers=3, idle_s=1.0, sleep_s=1.0, short_tasks=30)
    check(results, {"many_workers"})
    names = [r.name for r in results]
    for phase in ("idle", "busy, one long task per worker", "busy, short tasks"):
        for what in ("statements per worker-second", "server CPU per worker", "worker CPU per worker", "deadlocks"):
            assert "%s: %s" % (phase, what) in names, names
    (throughput,) = [r for r in results if r.name.endswith("throughput")]
    if throughput.value is not None:
        assert throughput.jobs == 30 and throughput.duplicates == 0 and throughput.note == ""
        assert all(r.processes == 3 for r in results)


def test_pg_churn(services):
    results = pg_churn.run(services, rows=3000, claims=5)
    check(results, {"pg_churn"})
    if results[0].value is not None:
        fresh, churned, ratio = results
        assert churned.jobs == 3000 and ratio.unit == "ratio"
        assert abs(ratio.value - churned.value / fresh.value) < 1e-9
        assert churned.extra["churned_table"]["n_live_tup"] is not None


def test_pg_churn_with_the_scheduler_maintenance_and_without(services):
    for scheduler in (True, False):
        results = pg_churn.run(services, rows=3000, claims=5, scheduler=scheduler)
        check(results, {"pg_churn"})
        if results[0].value is not None:
            extra = results[-1].extra
            assert extra["scheduler_maintenance"] is scheduler and extra["fresh_claim_buffers"] >= 1
            assert scheduler or extra["scheduler_vacuums"] == 0


def test_idle_listen(services):
    results = idle_listen.run(services, workers=2, window_s=1.0, pickups=1, settle_s=1.0)
    check(results, {"idle_listen"})
    if results[0].value is not None:
        names = [r.name for r in results]
        for mode in ("poll", "listen"):
            assert "idle (%s): transactions per worker-second" % mode in names, names
        assert all(r.processes == 2 and r.value >= 0 for r in results)


def test_targets_table_and_docs(tmp_path, services):
    results = seed_claim.run(services, backends=("sqlite",), process_counts=(4,), jobs=20)
    results += [Result("limits", "raw claim+complete, SKIP LOCKED, 1 job/claim", "mariadb", 1000.0, "jobs/s", processes=2),
                Result("end_to_end", "end to end: 10 null tasks, 2 workers", "mariadb", 600.0, "tasks/s", processes=2)]
    results += [Result("end_to_end", "controller CPU per task (workers + children + scheduler + database server)",
                       "mariadb", 2.0, "ms", processes=2, extra=dict(cpu_ms_per_task={"workers": 1.5, "scheduler": 0.5})),
                Result("peers", "Celery prefork(2): 10 no-op jobs", "amqp", 1200.0, "jobs/s", processes=2),
                Result("peers", "Celery prefork(2), acks_late + prefetch 1: 10 no-op jobs", "amqp", 300.0, "jobs/s",
                       processes=2),
                Result("pg_churn", "claim latency, fresh queue table (median of 5)", "postgresql", 2.0, "ms"),
                Result("pg_churn", "claim latency after 1,000 claims churned (median of 5)", "postgresql", 2.2, "ms",
                       jobs=1000)]
    rows = run_all.targets(results)
    first = rows[0]
    assert first["ratio"] == 0.6 and first["met"] is True
    by_name = {row["target"]: row for row in rows}
    assert by_name["end to end (MariaDB, 2 workers) / Celery prefork(2), defaults"]["ratio"] == 0.5
    assert by_name["end to end (MariaDB, 2 workers) / Celery prefork(2), acks_late + prefetch 1"]["ratio"] == 2.0
    (cpu,) = [row for row in rows if row["target"].startswith("controller CPU per null task")]
    assert cpu["ratio"] == 2.0 and cpu["met"] is False and "workers 1.50" in cpu["detail"]
    assert by_name["PostgreSQL claim latency after 1,000 claims churned / fresh table"]["met"] is True
    assert any(row["target"].startswith("our SQL claim at a worker's batch size") for row in rows)
    assert any(row["target"].startswith("end to end through the AMQP queue") for row in rows)
    assert all(set(row) == {"target", "ratio", "goal", "met", "detail"} for row in rows)
    facts = dict(date="today", cpu="cpu", cores=2, memory_gb=1, os="os", servers={"sqlite": "3"})
    table = run_all.render(results, rows, facts, "./bench/run_all.py --quick")
    assert "raw claim+complete" in table and "target" in table
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nOther section.\n")
    run_all.update_docs(table, str(docs))
    run_all.update_docs(table, str(docs))  # replaces its own block, keeps the rest
    text = docs.read_text()
    assert text.count(run_all.DOCS_START) == 1 and "Other section." in text


def test_run_all_runs_as_a_script_from_a_fresh_shell(tmp_path):
    environment = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    completed = subprocess.run([os.path.join(PROJECT_ROOT, "bench", "run_all.py"), "--help"], cwd=str(tmp_path),
                               env=environment, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "--quick" in completed.stdout
