"""The SQL queue's table: a narrow list of what is queued right now, claimed ``FOR UPDATE SKIP LOCKED``.

Rows are written in the transaction that queues their attempts and deleted by the claim that takes them,
so the table never holds history and a claim costs the same with ten or ten million finished tasks.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.engine import chunks
from eas_controller.database.schema import attempts, sql_queue, tasks


def insert(connection: Connection, entries: list[dict]) -> None:
    """Queue entries (attempt_id, task_type, priority) become rows."""
    if not entries:
        return
    now = time.time()
    connection.execute(sql_queue.insert(), [
        dict(attempt_id=e["attempt_id"], task_type=e["task_type"], rank=-int(e.get("priority", 0)), enqueued_at=now)
        for e in entries])


def take(connection: Connection, task_types: list[str] | None, limit: int) -> list[int]:
    """Lock up to ``limit`` rows (any type, or of ``task_types``) in (rank, id) order, skipping rows other
    claims hold, and delete them. Returns their attempt ids."""
    if task_types is None:
        rows = connection.execute(_NEXT_ANY, dict(limit=limit)).all()
    else:
        rows = connection.execute(_NEXT_OF_TYPES, dict(types=task_types, limit=limit)).all()
    if rows:
        connection.execute(_TAKE, dict(ids=[row.id for row in rows]))
    return [row.attempt_id for row in rows]


def remove(connection: Connection, attempt_ids: list[int]) -> None:
    """Take attempts' rows out (they are being cancelled or moved to another queue)."""
    for chunk in chunks(attempt_ids):
        connection.execute(sql_queue.delete().where(sql_queue.c.attempt_id.in_(chunk)))


def take_all(connection: Connection) -> int:
    """Lock and delete every row (moving the queue to RabbitMQ). Returns how many."""
    ids = connection.execute(sa.select(sql_queue.c.id).with_for_update()).scalars().all()
    for chunk in chunks(ids):
        connection.execute(sql_queue.delete().where(sql_queue.c.id.in_(chunk)))
    return len(ids)


def present(connection: Connection, attempt_ids: list[int]) -> set[int]:
    found: set[int] = set()
    for chunk in chunks(attempt_ids):
        found.update(connection.execute(sa.select(sql_queue.c.attempt_id).where(sql_queue.c.attempt_id.in_(chunk))).scalars())
    return found


def counts(connection: Connection, task_types: list[str]) -> dict[str, int]:
    return dict(connection.execute(sa.select(sql_queue.c.task_type, sa.func.count())
                                   .where(sql_queue.c.task_type.in_(task_types)).group_by(sql_queue.c.task_type)).all())


def stale_rows(connection: Connection, task_types: list[str], carrier: str) -> list[int]:
    """Rows whose attempt is missing, not queued any more, or carried by another queue."""
    return connection.execute(
        sa.select(sql_queue.c.id).select_from(sql_queue.outerjoin(attempts, attempts.c.id == sql_queue.c.attempt_id))
        .where(sql_queue.c.task_type.in_(task_types),
               sa.or_(attempts.c.id.is_(None), attempts.c.state != states.A_QUEUED, attempts.c.queue != carrier))
    ).scalars().all()


def delete_rows(connection: Connection, row_ids: list[int]) -> None:
    for chunk in chunks(row_ids):
        connection.execute(sql_queue.delete().where(sql_queue.c.id.in_(chunk)))


def missing_entries(connection: Connection, task_types: list[str], carrier: str, condition, queued_before: float) -> list[dict]:
    """Queued attempts carried by the SQL queue that have no row (after a restore or a hand edit)."""
    query = (sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority)
             .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id)
                          .outerjoin(sql_queue, sql_queue.c.attempt_id == attempts.c.id))
             .where(attempts.c.state == states.A_QUEUED, attempts.c.queue == carrier,
                    attempts.c.task_type.in_(task_types), attempts.c.queued_at <= queued_before,
                    sql_queue.c.id.is_(None))
             .order_by(attempts.c.id))
    if condition is not True:
        query = query.where(condition)
    return [dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority)
            for row in connection.execute(query)]


def total(connection: Connection, task_types: list[str]) -> int:
    return connection.execute(sa.select(sa.func.count()).select_from(sql_queue)
                              .where(sql_queue.c.task_type.in_(task_types))).scalar()


# The claim's statements, built once: a worker runs them for every batch it takes.
_NEXT_ANY = (
    sa.select(sql_queue.c.id, sql_queue.c.attempt_id).order_by(sql_queue.c.rank, sql_queue.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer, literal_execute=True)).with_for_update(skip_locked=True)
)
_NEXT_OF_TYPES = (
    sa.select(sql_queue.c.id, sql_queue.c.attempt_id).where(sql_queue.c.task_type.in_(sa.bindparam("types", expanding=True)))
    .order_by(sql_queue.c.rank, sql_queue.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer, literal_execute=True)).with_for_update(skip_locked=True)
)
_TAKE = sql_queue.delete().where(sql_queue.c.id.in_(sa.bindparam("ids", expanding=True)))
