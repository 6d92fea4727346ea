"""The read side of the REST API: jobs, tasks, attempts, log lines and products as JSON-ready dicts.

Read-only queries over the same tables the diagnostic scripts read; every list is ordered by id and paged
with ``limit``/``offset``, and says how many rows match in all (``total``).
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.schema import attempts, jobs, log_lines, product_versions, products, tasks
from eas_controller.reports import job_is_finished, task_metadata

TASK_COLUMNS = (
    tasks.c.id,
    tasks.c.job_id,
    tasks.c.parent_id,
    tasks.c.job_name,
    tasks.c.name,
    tasks.c.task_type,
    tasks.c.chain_path,
    tasks.c.state,
    tasks.c.is_control,
    tasks.c.priority,
    tasks.c.attempt_count,
    tasks.c.max_attempts,
    tasks.c.working_directory,
    tasks.c.error_text,
    tasks.c.created_at,
    tasks.c.updated_at,
)


def picked(row, fields: str, **computed) -> dict:
    """A JSON-ready dict of ``row``: ``fields`` names its columns, ``key=column`` where the API renames one."""
    result = {}
    for field in fields.split():
        key, _, column = field.partition("=")
        result[key] = getattr(row, column or key)
    result.update(computed)
    return result


def _page(connection: Connection, query, limit: int, offset: int, id_column) -> tuple[list, int]:
    total = connection.execute(sa.select(sa.func.count()).select_from(query.order_by(None).subquery())).scalar_one()
    rows = connection.execute(query.order_by(id_column).limit(limit).offset(offset)).all()
    return rows, total


def _counts(connection: Connection, job_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if job_ids:
        for job_id, state, count in connection.execute(
            sa.select(tasks.c.job_id, tasks.c.state, sa.func.count())
            .where(tasks.c.job_id.in_(job_ids))
            .group_by(tasks.c.job_id, tasks.c.state)
        ):
            counts[job_id][state] = count
    return counts


def job_dict(connection: Connection, row, counts: dict[str, int]) -> dict:
    from eas_controller.api.jobs import overall_state

    return picked(row, "job_id=id name source submitted_at", tasks=sum(counts.values()), counts=counts,
                  state=overall_state(counts, job_is_finished(connection, row.id)))


def list_jobs(connection: Connection, name: str | None, limit: int, offset: int) -> dict:
    query = sa.select(jobs.c.id, jobs.c.name, jobs.c.source, jobs.c.submitted_at)
    if name is not None:
        query = query.where(jobs.c.name == name)
    rows, total = _page(connection, query, limit, offset, jobs.c.id)
    counts = _counts(connection, [row.id for row in rows])
    return dict(
        items=[job_dict(connection, row, counts[row.id]) for row in rows], total=total, limit=limit, offset=offset
    )


def get_job(connection: Connection, job_id: int) -> dict | None:
    row = connection.execute(
        sa.select(jobs.c.id, jobs.c.name, jobs.c.source, jobs.c.submitted_at).where(jobs.c.id == job_id)
    ).first()
    return None if row is None else job_dict(connection, row, _counts(connection, [job_id])[job_id])


def task_dict(row) -> dict:
    return picked(row, "task_id=id job_id parent_id job_name name task_type chain_path state priority "
                       "attempts=attempt_count max_attempts working_directory error=error_text created_at updated_at",
                  is_control=bool(row.is_control))


def list_tasks(connection: Connection, filters: dict, limit: int, offset: int) -> dict:
    query = sa.select(*TASK_COLUMNS)
    for field in ("job_id", "parent_id", "state", "task_type"):
        if filters.get(field) is not None:
            query = query.where(tasks.c[field] == filters[field])
    if filters.get("job_name") is not None:
        from eas_controller.recovery import Selection

        query = query.where(Selection(job_name=filters["job_name"]).condition())
    rows, total = _page(connection, query, limit, offset, tasks.c.id)
    return dict(items=[task_dict(row) for row in rows], total=total, limit=limit, offset=offset)


def get_task(connection: Connection, task_id: int) -> dict | None:
    row = connection.execute(
        sa.select(*TASK_COLUMNS, tasks.c.description, tasks.c.metadata).where(tasks.c.id == task_id)
    ).first()
    if row is None:
        return None
    result = task_dict(row)
    result.update(
        description=json.loads(row.description),
        inherited=json.loads(row.metadata),
        metadata=task_metadata(connection, [task_id]).get(task_id, {}),
    )
    return result


def task_exists(connection: Connection, task_id: int) -> bool:
    return connection.execute(sa.select(tasks.c.id).where(tasks.c.id == task_id)).first() is not None


def list_attempts(connection: Connection, task_id: int) -> dict:
    rows = connection.execute(sa.select(attempts).where(attempts.c.task_id == task_id).order_by(attempts.c.id)).all()
    fields = ("attempt_id=id task_id number task_type state queue queued_at started_at ended_at lease_expires_at "
              "worker_name host pid exit_status wall_s cpu_s cpu_children_s error=error_text")
    items = [picked(row, fields) for row in rows]
    return dict(items=items, total=len(items))


def list_logs(connection: Connection, task_id: int, attempt_id: int | None, after: int, limit: int) -> dict:
    attempt_ids = sa.select(attempts.c.id).where(attempts.c.task_id == task_id)
    if attempt_id is not None:
        attempt_ids = attempt_ids.where(attempts.c.id == attempt_id)
    rows = connection.execute(
        sa.select(
            log_lines.c.id,
            log_lines.c.attempt_id,
            log_lines.c.created_at,
            log_lines.c.severity,
            log_lines.c.stream,
            log_lines.c.message,
        )
        .where(log_lines.c.attempt_id.in_(attempt_ids), log_lines.c.id > after)
        .order_by(log_lines.c.id)
        .limit(limit)
    ).all()
    items = [picked(row, "line_id=id attempt_id created_at severity stream message") for row in rows]
    return dict(items=items, next_after=items[-1]["line_id"] if items else after)


def list_products(connection: Connection, task_id: int) -> dict:
    rows = connection.execute(sa.select(products).where(products.c.task_id == task_id).order_by(products.c.id)).all()
    versions: dict[int, list] = {row.id: [] for row in rows}
    if versions:
        for version in connection.execute(
            sa.select(product_versions)
            .where(product_versions.c.product_id.in_(list(versions)))
            .order_by(product_versions.c.id)
        ):
            versions[version.product_id].append(
                picked(version, "version_id=id attempt_id path size md5 qc_state qc_message created_at"))
    items = [picked(row, "product_id=id semantic_type relative_path state latest_version_id", versions=versions[row.id])
             for row in rows]
    return dict(items=items, total=len(items))
