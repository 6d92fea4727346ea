"""Multi-row inserts that write shared values into the statement (MySQL family): every row reads back as it
was given, ids map to their rows, and values that need escaping survive, on every back end."""

from __future__ import annotations

import sqlalchemy as sa

from eas_controller.database.dialects import insert_rows_returning_ids
from eas_controller.database.engine import read_transaction, write_transaction
from eas_controller.database.many_rows import escapes_on_client, insert_rows, split_constants
from eas_controller.database.schema import jobs, task_dependencies, tasks

#: shared by every row: quotes, backslashes, percent signs (the drivers' own placeholders), non-ASCII
AWKWARD = "it's 100% \\ \"quoted\" %s %(name)s ünïcode ✓"


def _task_rows(job_id: int, count: int) -> list[dict]:
    return [dict(job_id=job_id, parent_id=None, name=None if k % 3 else "t%d" % k, chain_path="task_list[%d]" % k,
                 task_type="null", is_control=False, job_name=AWKWARD, working_directory=AWKWARD,
                 description='{"task": "null", "note": "%s"}' % AWKWARD.replace("\\", "\\\\").replace('"', '\\"'),
                 metadata="{}", state="ready", expansions=0, priority=-3, unmet_dependencies=0, attempt_count=0,
                 max_attempts=None, needs_evaluation=False, created_at=1234567890.123456, updated_at=1234567890.123456)
            for k in range(count)]


def test_rows_with_shared_values_read_back_as_given_and_ids_follow_the_rows(eas):
    with write_transaction(eas.engine) as connection:
        job_id = connection.execute(jobs.insert().values(name=AWKWARD, source="test", submitted_at=1.0)
                                    ).inserted_primary_key[0]
        rows = _task_rows(job_id, 2500)  # more than one batch
        ids = insert_rows_returning_ids(connection, tasks, rows)
        insert_rows(connection, task_dependencies, [
            dict(task_id=ids[0], requires_task_id=task_id, kind="child", satisfied=False) for task_id in ids[1:]])
    assert len(ids) == len(set(ids)) == len(rows)
    with read_transaction(eas.engine) as connection:
        stored = {row.id: row for row in connection.execute(sa.select(tasks).where(tasks.c.job_id == job_id))}
        waits = connection.execute(sa.select(task_dependencies.c.requires_task_id, task_dependencies.c.kind,
                                             task_dependencies.c.satisfied)
                                   .where(task_dependencies.c.task_id == ids[0])).all()
    for task_id, row in zip(ids, rows):
        assert {column: getattr(stored[task_id], column) for column in row} == row
    assert sorted(waits) == sorted((task_id, "child", False) for task_id in ids[1:])


def test_only_the_mysql_family_takes_shared_values_out_of_the_parameters(eas):
    rows = _task_rows(1, 3)
    with write_transaction(eas.engine) as connection:
        constants, varying = split_constants(connection, tasks, rows)
        inlined = escapes_on_client(connection)
    if eas.engine.dialect.name in ("mysql", "mariadb") and inlined:
        assert set(constants) == set(rows[0]) - {"name", "chain_path"}
        assert all(set(row) == {"name", "chain_path"} for row in varying)
    else:
        assert constants == {} and varying == rows
