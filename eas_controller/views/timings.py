"""Timings: per task type (and per value of a loop parameter with ``by``), how long successful attempts took.

Wall time, CPU time of the implementation and CPU time including its children: count, mean, median, max.
"""

from __future__ import annotations

import json
import statistics

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.schema import attempts, tasks
from eas_controller.views.jobs import of_selected_jobs

MEASURES = ("wall_s", "cpu_s", "cpu_children_s")
TIMING_COLUMNS = ["task_type", "count"] + ["%s_%s" % (measure, stat) for measure in MEASURES
                                           for stat in ("mean", "median", "max")]


def timings(connection: Connection, job_name: str | None = None, task_type: str | None = None,
            by: str | None = None, job_id: int | None = None) -> list[dict]:
    """One row per task type (per task type and value of metadata ``by``), over succeeded attempts."""
    query = (sa.select(tasks.c.task_type, tasks.c.metadata, attempts.c.wall_s, attempts.c.cpu_s, attempts.c.cpu_children_s)
             .join(tasks, tasks.c.id == attempts.c.task_id).where(attempts.c.state == states.A_SUCCEEDED))
    query = of_selected_jobs(connection, query, job_name, job_id)
    if task_type is not None:
        query = query.where(tasks.c.task_type == task_type)
    groups: dict[tuple, dict[str, list]] = {}
    for row in connection.execute(query):
        key = (row.task_type,)
        if by is not None:
            value = json.loads(row.metadata).get(by)
            key = (row.task_type, json.dumps(value) if isinstance(value, (dict, list)) else value)
        values = groups.setdefault(key, {measure: [] for measure in MEASURES})
        for measure in MEASURES:
            if getattr(row, measure) is not None:
                values[measure].append(getattr(row, measure))
    result = []
    for key in sorted(groups, key=lambda k: tuple((v is None, str(type(v)), v) for v in k)):
        values = groups[key]
        entry = dict(task_type=key[0])
        if by is not None:
            entry[by] = key[1]
        entry["count"] = max(len(v) for v in values.values())
        for measure in MEASURES:
            data = values[measure]
            entry["%s_mean" % measure] = round(statistics.fmean(data), 4) if data else None
            entry["%s_median" % measure] = round(statistics.median(data), 4) if data else None
            entry["%s_max" % measure] = round(max(data), 4) if data else None
        result.append(entry)
    return result


def timing_columns(by: str | None) -> list[str]:
    return TIMING_COLUMNS[:1] + ([by] if by else []) + TIMING_COLUMNS[1:]
