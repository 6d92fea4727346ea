#!/usr/bin/env python3
"""Do the console's task tree and progress_summary.py stay fast on a 100,000-task job?

A job shaped like a parameter sweep (a chain, a for loop, N tasks under it; 90% done, 4% failed, 3%
running, 3% waiting; every started task with an attempt) is bulk-loaded with SQL, once at 1,000 tasks and
once at 100,000. At each size, each measured 5 times (median reported):
- the task-tree page (``GET /job/<id>/tree``, depth 2: the root, the loop and the first page of 100 of its
  children, with subtree counts) through the console's Flask application, the first view (counts cache
  empty) and a view repeated within 5 s (the unfinished loop's counts still cached);
- ``progress_summary`` (the view behind ``progress_summary.py --job-name``), and the script itself run as
  a process once (its interpreter start included);
- the jobs page (per-job counts from the job index).
The goal: under a second at 10^5, and the ratio to 1,000 tasks as small as the queries allow.

``--suggested-indexes`` also measures with two indexes the schema does not have yet, created on the
benchmark's own database only: ``(parent_id, state)`` (subtree counts read the index alone) and
``(job_id, task_type, state)`` (progress per task type reads the index alone).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import json
import statistics
import subprocess
import time

from bench.common import PROJECT_ROOT, Result, Services, unavailable_reason

REPEATS = 5
SUGGESTED_INDEXES = ("CREATE INDEX ix_bench_tasks_parent_state ON eas_tasks (parent_id, state)",
                     "CREATE INDEX ix_bench_tasks_job_type_state ON eas_tasks (job_id, task_type, state)")
STATE_SHARES = (("done", 90), ("failed", 4), ("running", 3), ("waiting", 3))


def load_job(engine, tasks_wanted: int, job_name: str) -> int:
    """Insert one sweep job of ``tasks_wanted`` tasks in bulk; returns its id."""
    import sqlalchemy as sa

    from eas_controller.database.engine import write_transaction
    from eas_controller.database.schema import attempts, jobs, tasks

    now = time.time()
    common = dict(working_directory="", description='{"task": "null"}', expansions=0, needs_evaluation=False,
                  priority=0, unmet_dependencies=0, max_attempts=None, created_at=now, updated_at=now, job_name=job_name)
    with write_transaction(engine) as connection:
        job_id = connection.execute(jobs.insert().values(name=job_name, source="bench", submitted_at=now)
                                    ).inserted_primary_key[0]
        root = connection.execute(tasks.insert().values(
            job_id=job_id, parent_id=None, name=None, chain_path="", task_type="execution_chain", is_control=True,
            metadata="{}", state="running", attempt_count=0, **common)).inserted_primary_key[0]
        loop = connection.execute(tasks.insert().values(
            job_id=job_id, parent_id=root, name="sweep", chain_path="task_list[0]", task_type="execution_for_loop",
            is_control=True, metadata="{}", state="running", attempt_count=0, **common)).inserted_primary_key[0]
    leaves = tasks_wanted - 2
    pattern = [state for state, share in STATE_SHARES for _ in range(share)]
    for start in range(0, leaves, 10_000):
        rows = []
        for n in range(start, min(leaves, start + 10_000)):
            state = pattern[n % len(pattern)]
            rows.append(dict(job_id=job_id, parent_id=loop, name="point", chain_path="task_list[0].task_list[0]",
                             task_type="null", is_control=False, metadata='{"x": %d, "x_index": %d}' % (n, n),
                             state=state, attempt_count=0 if state == "waiting" else 1, **common))
        with write_transaction(engine) as connection:
            connection.execute(tasks.insert(), rows)
    outcome = sa.case((tasks.c.state == "done", "succeeded"), (tasks.c.state == "failed", "failed"), else_="running")
    with write_transaction(engine) as connection:
        connection.execute(attempts.insert().from_select(
            ["task_id", "number", "task_type", "state", "queue", "queued_at", "started_at", "ended_at", "worker_id",
             "worker_name", "host", "pid", "exit_status", "wall_s", "cpu_s", "cpu_children_s"],
            sa.select(tasks.c.id, sa.literal(1), tasks.c.task_type, outcome, sa.literal("sql"), tasks.c.created_at,
                      tasks.c.created_at, sa.case((tasks.c.state == "running", None), else_=tasks.c.created_at + 1),
                      sa.literal(1), sa.literal("bench-worker"), sa.literal("bench"), sa.literal(1), sa.literal(0),
                      sa.literal(1.0), sa.literal(0.9), sa.literal(0.9))
            .where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False), tasks.c.state != "waiting")))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("ANALYZE")
    elif engine.dialect.name in ("mysql", "mariadb"):
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE TABLE eas_tasks, eas_attempts")
    else:
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
    return job_id


def _median_ms(action, repeats: int = REPEATS, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(services: Services, backend: str, size: int, url: str, repeats: int = REPEATS,
            suggested_indexes: bool = False) -> dict:
    from bench.common import fresh_schema
    from eas_controller.config import Settings
    from eas_controller.database.engine import read_transaction
    from eas_controller.views.progress import progress_summary
    from eas_controller.views.tree import clear_counts_cache
    from eas_controller.web_interface.app import create_app

    engine = fresh_schema(url)
    try:
        started = time.perf_counter()
        job_name = "sweep_%d" % size
        job_id = load_job(engine, size, job_name)
        load_s = time.perf_counter() - started
        if suggested_indexes:
            with engine.begin() as connection:
                for statement in SUGGESTED_INDEXES:
                    connection.exec_driver_sql(statement)
        settings = Settings(db_url=url, data_dir=services.work_dir)
        client = create_app(settings, engine=engine).test_client()

        def tree_page():
            response = client.get("/job/%d/tree?depth=2" % job_id)
            assert response.status_code == 200 and b"sweep" in response.data, response.status_code

        def jobs_page():
            assert client.get("/").status_code == 200

        def progress():
            with read_transaction(engine) as connection:
                rows = progress_summary(connection, job_name)
            assert rows[-1]["total"] == size - 2, rows

        figures = dict(tree_first_ms=_median_ms(tree_page, repeats, before=clear_counts_cache),
                       tree_repeat_ms=_median_ms(tree_page, repeats), progress_ms=_median_ms(progress, repeats),
                       jobs_page_ms=_median_ms(jobs_page, repeats), load_s=load_s)
        script = os.path.join(PROJECT_ROOT, "eas_controller", "diagnostics", "progress_summary.py")
        environment = dict(os.environ, EAS_DB_URL=url, EAS_DATA_DIR=services.work_dir,
                           EAS_CONFIG=os.path.join(services.work_dir, "none.yaml"))
        started = time.perf_counter()
        completed = subprocess.run([script, "--job-name", job_name, "--format", "json"], env=environment,
                                   capture_output=True, text=True, timeout=600)
        figures["script_ms"] = (time.perf_counter() - started) * 1000
        if completed.returncode != 0 or json.loads(completed.stdout)[-1]["total"] != size - 2:
            raise RuntimeError("progress_summary.py failed: %s" % completed.stderr[-500:])
        return figures
    finally:
        engine.dispose()


LABELS = (("tree_first_ms", "task-tree page, first view (depth 2)"), ("tree_repeat_ms", "task-tree page, repeated within 5 s"),
          ("progress_ms", "progress_summary query (--job-name)"), ("script_ms", "progress_summary.py as a process"),
          ("jobs_page_ms", "jobs page (counts per job)"))


def run(services: Services, backends=("mariadb",), sizes=(1_000, 100_000), repeats: int = REPEATS,
        suggested_indexes: bool = False) -> list[Result]:
    results = []
    for backend, indexes in [(b, False) for b in backends] + ([(b, True) for b in backends] if suggested_indexes else []):
        reason = unavailable_reason(services, backend)
        if reason:
            results.append(Result.skipped("diagnostics", "task tree and progress", backend, reason, "ms"))
            continue
        url = services.sqlalchemy_url(backend, "diagnostics")
        first = None
        for size in sizes:
            figures = measure(services, backend, size, url, repeats, indexes)
            first = first or figures
            for key, name in LABELS:
                ratio = figures[key] / first[key] if first[key] else None
                results.append(Result("diagnostics", "%s, %s-task job%s" % (
                    name, "{:,}".format(size), " (+ suggested indexes)" if indexes else ""), backend,
                                      round(figures[key], 2), "ms", jobs=size,
                                      note="" if size == sizes[0] else "x%.2f of %s" % (ratio, "{:,}".format(sizes[0])),
                                      extra=dict(tasks=size, metric=key, ratio_to_smallest=ratio, indexes=indexes,
                                                 load_s=round(figures["load_s"], 1))))
    return results


def render(results: list[Result]) -> str:
    """A Markdown table: one row per measure, the sizes side by side with the ratio."""
    sizes = sorted({r.jobs for r in results if r.value is not None})
    lines = ["| back end | measure | " + " | ".join("%s tasks (ms)" % "{:,}".format(s) for s in sizes) + " | ratio |",
             "|---|---|" + "---|" * len(sizes) + "---|"]
    by_metric: dict = {}
    for r in results:
        if r.value is not None:
            by_metric.setdefault((r.backend, r.extra["metric"], r.extra.get("indexes", False)), {})[r.jobs] = r
    for (backend, metric, indexes), row in by_metric.items():
        name = dict(LABELS)[metric] + (" (+ suggested indexes)" if indexes else "")
        values = [row.get(s) for s in sizes]
        ratio = values[-1].extra["ratio_to_smallest"] if values[-1] is not None else None
        lines.append("| %s | %s | %s | %s |" % (backend, name, " | ".join("%.1f" % v.value if v else "-" for v in values),
                                               "x%.2f" % ratio if ratio is not None else "-"))
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000", help="job sizes in tasks (default 1000,100000)")
    parser.add_argument("--backend", action="append", choices=("mariadb", "postgresql", "sqlite"),
                        help="back ends to measure (default mariadb)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="measurements per figure (median reported)")
    parser.add_argument("--suggested-indexes", action="store_true",
                        help="measure again with the two suggested indexes (on the benchmark database only)")
    args = parser.parse_args(argv)
    sizes = tuple(int(size) for size in args.sizes.split(","))
    results = run(Services.from_environment(), tuple(args.backend or ["mariadb"]), sizes, args.repeats,
                  args.suggested_indexes)
    print_results(results)
    print()
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
