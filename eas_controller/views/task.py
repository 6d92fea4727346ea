"""One task in full, for the console's task page: description, metadata in and out, attempts with their
log lines, and the file products it made."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.schema import log_lines, product_versions, products, tasks
from eas_controller.views.jobs import task_metadata

MAX_LOG_LINES = 2000


def task_detail(connection: Connection, task_id: int) -> dict | None:
    row = connection.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()
    if row is None:
        return None
    made = connection.execute(
        sa.select(products.c.id, products.c.semantic_type, products.c.relative_path, products.c.state,
                  product_versions.c.id.label("version_id"), product_versions.c.size, product_versions.c.md5,
                  product_versions.c.qc_state, product_versions.c.created_at)
        .select_from(products.outerjoin(product_versions, product_versions.c.id == products.c.latest_version_id))
        .where(products.c.task_id == task_id).order_by(products.c.id)).all()
    logs = connection.execute(sa.select(log_lines.c.attempt_id, log_lines.c.created_at, log_lines.c.severity,
                                        log_lines.c.stream, log_lines.c.message)
                              .where(log_lines.c.task_id == task_id).order_by(log_lines.c.id).limit(MAX_LOG_LINES)).all()
    return dict(task_id=row.id, parent_id=row.parent_id, job_id=row.job_id, job_name=row.job_name, task_name=row.name,
                task_type=row.task_type, state=row.state, chain_path=row.chain_path, is_control=bool(row.is_control),
                working_directory=row.working_directory, description=json.loads(row.description),
                metadata_in=json.loads(row.metadata), metadata_out=task_metadata(connection, [row.id]).get(row.id, {}),
                error=row.error_text, products=[dict(r._mapping) for r in made],
                logs=[dict(r._mapping) for r in logs])


def products_page(connection: Connection, job_id: int, after_id: int = 0, limit: int = 200) -> tuple[list[dict], int | None]:
    """File products of a job, a page at a time (by product id)."""
    rows = connection.execute(
        sa.select(products.c.id, products.c.task_id, products.c.semantic_type, products.c.relative_path,
                  products.c.state, product_versions.c.size, product_versions.c.md5, product_versions.c.qc_state)
        .select_from(products.join(tasks, tasks.c.id == products.c.task_id)
                     .outerjoin(product_versions, product_versions.c.id == products.c.latest_version_id))
        .where(tasks.c.job_id == job_id, products.c.id > after_id).order_by(products.c.id).limit(limit + 1)).all()
    more = rows[limit - 1].id if len(rows) > limit else None
    return [dict(r._mapping) for r in rows[:limit]], more
