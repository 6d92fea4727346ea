"""The pass/fail grid of a parameter sweep: one row per task of a type, one column per loop parameter
(the metadata its loops gave it) and one per output-metadata key (such as ``outcome``)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.schema import tasks
from eas_controller.views.jobs import of_selected_jobs, task_metadata


def pass_fail_grid(connection: Connection, job_name: str | None = None, task_type: str | None = None,
                   limit: int | None = None, job_id: int | None = None) -> tuple[list[dict], list[str]]:
    """Rows and their columns: task_id, task_type, state, the loop parameters, then the output keys."""
    query = (sa.select(tasks.c.id, tasks.c.task_type, tasks.c.state, tasks.c.metadata)
             .where(tasks.c.is_control.is_(False)).order_by(tasks.c.id))
    query = of_selected_jobs(connection, query, job_name, job_id)
    if task_type is not None:
        query = query.where(tasks.c.task_type == task_type)
    if limit is not None:
        query = query.limit(limit)
    rows = connection.execute(query).all()
    outputs = task_metadata(connection, [row.id for row in rows])
    parameters: list[str] = []
    keys: list[str] = []
    result = []
    for row in rows:
        inherited = {k: v for k, v in json.loads(row.metadata).items() if not k.endswith("_index")}
        made = outputs.get(row.id, {})
        for name in inherited:
            if name not in parameters:
                parameters.append(name)
        for name in made:
            if name not in keys:
                keys.append(name)
        result.append(dict(task_id=row.id, task_type=row.task_type, state=row.state, **inherited,
                           **{k: v for k, v in made.items() if k not in inherited}))
    columns = ["task_id", "task_type", "state"] + parameters + [key for key in keys if key not in parameters]
    return [{column: row.get(column) for column in columns} for row in result], columns
