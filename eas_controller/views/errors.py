"""Errors: failed and stalled attempts, newest first, with the task, worker, host, time and the error."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.schema import attempts, log_lines, tasks
from eas_controller.views.jobs import of_selected_jobs
from eas_controller.views.output import rounded, when

ERROR_COLUMNS = ["attempt_id", "task_id", "task_type", "task_name", "attempt", "state", "worker", "host", "ended",
                 "wall_s", "exit_status", "error"]


def errors_list(connection: Connection, job_name: str | None = None, task_type: str | None = None,
                since: float | None = None, verbose: bool = False, limit: int = 1000,
                job_id: int | None = None) -> list[dict]:
    """Failed and stalled attempts (at most ``limit``, newest first). The error is its first line unless
    ``verbose``, which gives the whole text (the traceback) and the attempt's stderr and ERROR log lines."""
    query = (sa.select(attempts.c.id, attempts.c.task_id, attempts.c.number, attempts.c.state, attempts.c.worker_name,
                       attempts.c.host, attempts.c.started_at, attempts.c.ended_at, attempts.c.wall_s,
                       attempts.c.exit_status, attempts.c.error_text, tasks.c.task_type, tasks.c.name, tasks.c.job_name)
             .join(tasks, tasks.c.id == attempts.c.task_id)
             .where(attempts.c.state.in_([states.A_FAILED, states.A_STALLED]))
             .order_by(attempts.c.id.desc()).limit(limit))
    query = of_selected_jobs(connection, query, job_name, job_id)
    if task_type is not None:
        query = query.where(attempts.c.task_type == task_type)
    if since is not None:
        query = query.where(sa.func.coalesce(attempts.c.ended_at, attempts.c.started_at, attempts.c.queued_at) >= since)
    result = []
    for row in connection.execute(query).all():
        error = row.error_text or ("worker lost (lease expired)" if row.state == states.A_STALLED else "")
        entry = dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, task_name=row.name,
                     job_name=row.job_name, attempt=row.number, state=row.state, worker=row.worker_name, host=row.host,
                     started=when(row.started_at), ended=when(row.ended_at), ended_at=row.ended_at,
                     wall_s=rounded(row.wall_s), exit_status=row.exit_status,
                     error=error if verbose else (error.strip().splitlines() or [""])[-1][:200])
        if verbose:
            entry["log"] = [line.message for line in connection.execute(
                sa.select(log_lines.c.message).where(log_lines.c.attempt_id == row.id,
                                                     sa.or_(log_lines.c.stream == "stderr", log_lines.c.severity == "ERROR"))
                .order_by(log_lines.c.id).limit(200))]
        result.append(entry)
    return result
