"""Activity: which attempts ran on which worker and when, for the Gantt chart of the console and the report."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.schema import attempts, tasks


def activity(connection: Connection, job_id: int, limit: int = 5000) -> list[dict]:
    """The job's most recent ``limit`` attempts that started, oldest first: worker, task, start, end, state."""
    rows = connection.execute(
        sa.select(attempts.c.id, attempts.c.task_id, attempts.c.number, attempts.c.state, attempts.c.worker_name,
                  attempts.c.host, attempts.c.started_at, attempts.c.ended_at, tasks.c.task_type, tasks.c.name)
        .join(tasks, tasks.c.id == attempts.c.task_id)
        .where(tasks.c.job_id == job_id, attempts.c.started_at.is_not(None))
        .order_by(attempts.c.id.desc()).limit(limit)).all()
    return [dict(attempt_id=row.id, task_id=row.task_id, attempt=row.number, state=row.state,
                 worker=row.worker_name or "?", host=row.host, started_at=row.started_at, ended_at=row.ended_at,
                 task_type=row.task_type, task_name=row.name) for row in reversed(rows)]
