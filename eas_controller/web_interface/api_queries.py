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

    return dict(
        job_id=row.id,
        name=row.name,
        source=row.source,
        submitted_at=row.submitted_at,
        tasks=sum(counts.values()),
        counts=counts,
        state=overall_state(counts, job_is_finished(connection, row.id)),
    )


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
    return dict(
        task_id=row.id,
        job_id=row.job_id,
        parent_id=row.parent_id,
        job_name=row.job_name,
        name=row.name,
        task_type=row.task_type,
        chain_path=row.chain_path,
        state=row.state,
        is_control=bool(row.is_control),
        priority=row.priority,
        attempts=row.attempt_count,
        max_attempts=row.max_attempts,
        working_directory=row.working_directory,
        error=row.error_text,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


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
    items = [
        dict(
            attempt_id=row.id,
            task_id=row.task_id,
            number=row.number,
            task_type=row.task_type,
            state=row.state,
            queue=row.queue,
            queued_at=row.queued_at,
            started_at=row.started_at,
            ended_at=row.ended_at,
            lease_expires_at=row.lease_expires_at,
            worker_name=row.worker_name,
            host=row.host,
            pid=row.pid,
            exit_status=row.exit_status,
            wall_s=row.wall_s,
            cpu_s=row.cpu_s,
            cpu_children_s=row.cpu_children_s,
            error=row.error_text,
        )
        for row in rows
    ]
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
    items = [
        dict(
            line_id=row.id,
            attempt_id=row.attempt_id,
            created_at=row.created_at,
            severity=row.severity,
            stream=row.stream,
            message=row.message,
        )
        for row in rows
    ]
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
                dict(
                    version_id=version.id,
                    attempt_id=version.attempt_id,
                    path=version.path,
                    size=version.size,
                    md5=version.md5,
                    qc_state=version.qc_state,
                    qc_message=version.qc_message,
                    created_at=version.created_at,
                )
            )
    items = [
        dict(
            product_id=row.id,
            semantic_type=row.semantic_type,
            relative_path=row.relative_path,
            state=row.state,
            latest_version_id=row.latest_version_id,
            versions=versions[row.id],
        )
        for row in rows
    ]
    return dict(items=items, total=len(items))
