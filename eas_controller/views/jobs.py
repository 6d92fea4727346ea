"""Jobs: which exist, how many of their tasks are in each state, whether one is finished, its summary.

Counts per job use ``ix_eas_tasks_job (job_id, state)`` and read only the index, never the whole history.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.store.metadata import output_of
from eas_controller.database.schema import attempts, control_progress, jobs, tasks
from eas_controller.views import NotFound
from eas_controller.views.output import short


class UnknownJob(NotFound):
    """No job matches the given name or id."""


def resolve_job_ids(connection: Connection, job_name: str | None = None, job_id: int | None = None) -> list[int]:
    query = sa.select(jobs.c.id).order_by(jobs.c.id)
    if job_id is not None:
        query = query.where(jobs.c.id == job_id)
    if job_name is not None:
        query = query.where(jobs.c.name == job_name)
    return [row.id for row in connection.execute(query)]


def require_job_ids(connection: Connection, job_name: str | None = None, job_id: int | None = None) -> list[int] | None:
    """The selected jobs' ids (None: every job); an unknown name or id is an error, not an empty answer."""
    if job_name is None and job_id is None:
        return None
    ids = resolve_job_ids(connection, job_name, job_id)
    if not ids:
        raise UnknownJob("no job named %r" % job_name if job_name is not None else "no job with id %s" % job_id)
    return ids


def of_selected_jobs(connection: Connection, query, job_name: str | None, job_id: int | None):
    """``query`` narrowed to the tasks of the selected jobs (see :func:`require_job_ids`)."""
    job_ids = require_job_ids(connection, job_name, job_id)
    return query if job_ids is None else query.where(tasks.c.job_id.in_(job_ids))


def task_metadata(connection: Connection, task_ids: list[int]) -> dict[int, dict]:
    """Each task's output metadata (scope ``task``) as a dict."""
    return output_of(connection, task_ids)


def job_state_counts(connection: Connection, job_id: int) -> dict[str, int]:
    rows = connection.execute(sa.select(tasks.c.state, sa.func.count()).where(tasks.c.job_id == job_id)
                              .group_by(tasks.c.state))
    return {state: count for state, count in rows}


def list_jobs(connection: Connection, limit: int = 50, before_id: int | None = None) -> list[dict]:
    """The newest jobs first, a page at a time, each with its task counts per state."""
    query = sa.select(jobs.c.id, jobs.c.name, jobs.c.source, jobs.c.submitted_at).order_by(jobs.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(jobs.c.id < before_id)
    result = []
    for row in connection.execute(query).all():
        counts = job_state_counts(connection, row.id)
        total = sum(counts.values())
        finished = sum(counts.get(state, 0) for state in states.TASK_FINAL_STATES)
        result.append(dict(job_id=row.id, job_name=row.name, source=row.source, submitted_at=row.submitted_at,
                           counts=counts, total=total, percent_finished=round(100.0 * finished / total, 1) if total else 0.0))
    return result


def job_is_finished(connection: Connection, job_id: int) -> bool:
    """Nothing in the job can still move: no task is ready, queued or running (a running control task whose
    children can never finish does not count), and nothing waits on a task that can still finish."""
    active = connection.execute(sa.select(tasks.c.id).where(
        tasks.c.job_id == job_id,
        sa.or_(tasks.c.state.in_([states.READY, states.QUEUED]),
               sa.and_(tasks.c.state == states.RUNNING, tasks.c.is_control.is_(False)))).limit(1)).first()
    if active is not None:
        return False
    uncounted = connection.execute(  # children finished whose control task the scheduler has yet to count down
        sa.select(control_progress.c.id).join(tasks, tasks.c.id == control_progress.c.task_id)
        .where(tasks.c.job_id == job_id).limit(1)).first()
    return uncounted is None


def depth_first(rows: list[dict]) -> list[dict]:
    """Rows (with task_id and parent_id) reordered parents first, each followed by its subtree."""
    children: dict = {}
    for row in rows:
        children.setdefault(row["parent_id"], []).append(row)
    ids = {row["task_id"] for row in rows}
    ordered: list[dict] = []
    stack = [row for row in reversed(rows) if row["parent_id"] is None or row["parent_id"] not in ids]
    while stack:
        row = stack.pop()
        ordered.append(row)
        stack.extend(reversed(children.get(row["task_id"], [])))
    return ordered


def job_summary(connection: Connection, job_id: int) -> list[dict]:
    """Worker tasks of a job with their latest attempt: what ``run_local.py`` prints at the end."""
    latest = (sa.select(attempts.c.task_id, sa.func.max(attempts.c.id).label("attempt_id"))
              .join(tasks, tasks.c.id == attempts.c.task_id).where(tasks.c.job_id == job_id)
              .group_by(attempts.c.task_id).subquery())
    rows = connection.execute(
        sa.select(tasks.c.id, tasks.c.name, tasks.c.task_type, tasks.c.state, tasks.c.attempt_count,
                  tasks.c.metadata, tasks.c.error_text, attempts.c.wall_s, attempts.c.worker_name)
        .select_from(tasks.outerjoin(latest, latest.c.task_id == tasks.c.id)
                     .outerjoin(attempts, attempts.c.id == latest.c.attempt_id))
        .where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False)).order_by(tasks.c.id)
    ).all()
    metadata = task_metadata(connection, [row.id for row in rows])
    ids = connection.execute(sa.select(tasks.c.id, tasks.c.parent_id).where(tasks.c.job_id == job_id)).all()
    order = {row["task_id"]: position for position, row in enumerate(depth_first(
        [dict(task_id=task_id, parent_id=parent_id) for task_id, parent_id in ids]))}
    rows = sorted(rows, key=lambda row: order.get(row.id, 0))  # in chain order, loop bodies where the loop is
    return [dict(task_id=row.id, task=row.task_type + (" " + row.name if row.name else ""), state=row.state,
                 attempts=row.attempt_count, wall_s=None if row.wall_s is None else round(row.wall_s, 3),
                 worker=row.worker_name, loop_values=", ".join("%s=%s" % (k, short(v, 16)) for k, v in
                                                             json.loads(row.metadata).items() if not k.endswith("_index")),
                 output_metadata=short(metadata.get(row.id, {}), 50) if metadata.get(row.id) else "",
                 error=(row.error_text or "")[:70]) for row in rows]
