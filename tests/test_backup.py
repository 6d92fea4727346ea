"""db_save.py / db_restore.py: a run saved half way on SQLite continues on MariaDB or PostgreSQL and finishes
with every task run once; new rows continue past the restored ids; damaged files and non-empty targets are
refused."""

from __future__ import annotations

import gzip
import json

import pytest
import sqlalchemy as sa

from conftest import make_environment
from eas_controller.database import schema
from eas_controller.database.engine import make_engine, read_transaction
from eas_controller.database.schema import attempts, tasks
from queue_helpers import (attempts_by_task, cleanup, executions, run_scheduler_until, stop, submit,  # noqa: F401
                           task_states)


def pipeline(order_log: str) -> list:
    """Ten tasks that each make a file, one that joins them, one that reads the result."""
    first = [dict(task="record_order", name="part%d" % i, order_log=order_log, outputs={"part": "part%d.txt" % i})
             for i in range(10)]
    join = dict(task="concatenate", name="join", inputs={"p%02d" % i: "part%d.txt" % i for i in range(10)},
                outputs={"joined": "joined.txt"})
    final = dict(task="record_order", name="final", order_log=order_log, inputs={"joined": "joined.txt"},
                 outputs={"done": "final.txt"})
    return first + [join, final]


def table_rows(engine) -> dict[str, list]:
    with read_transaction(engine) as connection:
        return {table.name: [tuple(row) for row in connection.execute(sa.select(table).order_by(*table.primary_key))]
                for table in schema.metadata_obj.sorted_tables if table is not schema.schema_info}


@pytest.mark.parametrize("target", ["mysql", "postgresql"])
def test_save_on_sqlite_restore_elsewhere_and_finish(target, tmp_path, cleanup):
    source = make_environment("sqlite", tmp_path)
    cleanup(source)
    order_log = str(tmp_path / "ran.log")
    submit(source, pipeline(order_log), job_name="moved")
    worker = source.start_worker("--concurrency", "2", "--burst", "--poll-interval", "0.2", "--task-types", "record_order")
    try:  # the first stage runs here; the join is queued when the database is saved
        run_scheduler_until(source, lambda: worker.poll() is not None, 120, [worker])
    finally:
        stop([worker])
    run_scheduler_until(source, lambda: task_states(source).get("queued") == 1, 30)
    assert task_states(source) == {"done": 10, "queued": 1, "waiting": 1}
    backup = str(tmp_path / "saved.jsonl.gz")
    out = source.script("database_initialisation/db_save.py", "--output", backup).stdout
    assert "eas_tasks" in out and "saved" in out
    saved = table_rows(source.engine)

    destination = make_environment(target, tmp_path)
    cleanup(destination)
    out = destination.script("database_initialisation/db_restore.py", "--input", backup).stdout
    assert "restored" in out and "1 queued attempt(s) carried by the sql queue" in out
    restored = table_rows(destination.engine)
    assert restored == saved  # every row, every value, ids included
    max_attempt = max(row[0] for row in saved["eas_attempts"])
    max_version = max(row[0] for row in saved["eas_product_versions"])

    workers = [destination.start_worker("--concurrency", "2", "--burst", "--poll-interval", "0.2")]
    try:
        run_scheduler_until(destination, lambda: all(w.poll() is not None for w in workers), 120, workers)
    finally:
        stop(workers)
    assert task_states(destination) == {"done": 12}
    assert sorted(executions(order_log).values()) == [1] * 11  # ten parts and the final task, once each
    assert all(history.count("succeeded") == 1 and history[-1] == "succeeded"
               for history in attempts_by_task(destination).values())
    with read_transaction(destination.engine) as connection:
        final_attempt = connection.execute(sa.select(attempts.c.id).join(tasks, tasks.c.id == attempts.c.task_id)
                                           .where(tasks.c.name == "final")).scalar_one()
        versions = connection.execute(sa.select(schema.product_versions.c.id)).scalars().all()
    assert final_attempt > max_attempt  # sequences continued past the restored ids
    assert len(versions) == 12 and sorted(versions)[-2:][0] > max_version
    with open(destination.settings.data_dir + "/joined.txt") as handle:
        assert handle.read() == "".join("part" for _ in range(10))


def test_restore_refusals_and_force(tmp_path, cleanup):
    source = make_environment("sqlite", tmp_path)
    cleanup(source)
    submit(source, [dict(task="null", name="n%d" % i) for i in range(5)], job_name="first")
    backup = str(tmp_path / "saved.jsonl.gz")
    source.script("database_initialisation/db_save.py", "--output", backup, "--quiet")

    # into a new SQLite file: the schema is created there
    fresh_url = "sqlite:///" + str(tmp_path / "fresh.sqlite")
    out = source.script("database_initialisation/db_restore.py", "--input", backup, "--db-url", fresh_url).stdout
    assert "restored" in out
    fresh = make_engine(fresh_url)
    assert table_rows(fresh) == table_rows(source.engine)

    # a database holding tasks is not overwritten without --force
    result = source.script("database_initialisation/db_restore.py", "--input", backup, "--db-url", fresh_url, check=False)
    assert result.returncode == 2 and "not empty" in result.stderr and "--force" in result.stderr
    submit(source, [dict(task="null", name="extra")], job_name="second")
    out = source.script("database_initialisation/db_restore.py", "--input", backup, "--db-url", fresh_url,
                        "--force").stdout
    assert "restored" in out

    # a truncated file, another schema version, not a save file at all: refused, nothing changed
    with gzip.open(backup, "rt") as handle:
        lines = handle.readlines()
    truncated = str(tmp_path / "truncated.jsonl.gz")
    with gzip.open(truncated, "wt") as handle:
        handle.writelines(lines[:-3])
    before = table_rows(fresh)
    result = source.script("database_initialisation/db_restore.py", "--input", truncated, "--db-url", fresh_url,
                           "--force", check=False)
    assert result.returncode == 2 and "ends early" in result.stderr, result.stderr
    assert table_rows(fresh) == before
    header = json.loads(lines[0])
    header["schema_version"] = 999
    other = str(tmp_path / "other.jsonl.gz")
    with gzip.open(other, "wt") as handle:
        handle.writelines([json.dumps(header) + "\n"] + lines[1:])
    result = source.script("database_initialisation/db_restore.py", "--input", other, "--db-url", fresh_url, "--force",
                           check=False)
    assert result.returncode == 2 and "schema version 999" in result.stderr
    (tmp_path / "junk.gz").write_bytes(b"not gzip")
    result = source.script("database_initialisation/db_restore.py", "--input", str(tmp_path / "junk.gz"),
                           "--db-url", fresh_url, check=False)
    assert result.returncode == 2 and "not an EAS Controller save file" in result.stderr
    fresh.dispose()
