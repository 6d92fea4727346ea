"""The SQL queue's table: a narrow list of what is queued right now, claimed ``FOR UPDATE SKIP LOCKED``.

Rows are written in the transaction that queues their attempts and deleted by the claim that takes them,
so the table never holds history and a claim costs the same with ten or ten million finished tasks.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.dialects import notify_queued
from eas_controller.database.engine import chunks
from eas_controller.database.many_rows import insert_rows
from eas_controller.database.schema import attempts, sql_queue, tasks
from eas_controller.store import limits as limit_store

#: A claim whose rows turn out to be of full keys looks again past them, at most this many times.
LIMIT_ROUNDS = 3


def insert(connection: Connection, entries: list[dict]) -> None:
    """Queue entries (attempt_id, task_type, priority) become rows; on PostgreSQL, listening idle workers are
    notified when the transaction commits."""
    if not entries:
        return
    notify_queued(connection)
    now = time.time()
    insert_rows(connection, sql_queue, [
        dict(attempt_id=e["attempt_id"], task_type=e["task_type"], rank=-int(e.get("priority", 0)), enqueued_at=now,
             limit_key=e.get("limit_key"))
        for e in entries])


def take(connection: Connection, task_types: list[str] | None, limit: int) -> list[int]:
    """Lock up to ``limit`` rows (any type, or of ``task_types``) in (rank, id) order, skipping rows other
    claims hold, and delete them. Returns their attempt ids.

    Rows with a concurrency limit key are taken only while the key has a free slot (the keys' rows are
    locked and their running attempts counted, :func:`limits.free_slots`); the others stay queued, and the
    claim looks past their keys for other work (up to :data:`LIMIT_ROUNDS` times)."""
    taken: list = []
    full: set[str] = set()  # keys found without a free slot: the next round looks past their rows
    free: dict[str, int] = {}
    for _round in range(LIMIT_ROUNDS):
        want = limit - len(taken)
        rows = _candidates(connection, task_types, want, full)
        keys = {row.limit_key for row in rows if row.limit_key is not None} - set(free)
        if keys:
            free.update(limit_store.free_slots(connection, keys))
        refused, fitted = 0, []
        for row in rows:
            if row.limit_key is None:
                fitted.append(row)
            elif free[row.limit_key] > 0:
                free[row.limit_key] -= 1
                fitted.append(row)
            else:
                full.add(row.limit_key)
                refused += 1
        if fitted:  # deleted now, so that the next round (which sees this claim's own locks) cannot see them
            connection.execute(_TAKE, dict(ids=[row.id for row in fitted]))
            taken.extend(fitted)
        if not refused or len(rows) < want:  # everything fitted, or nothing more is queued past them
            break
    return [row.attempt_id for row in taken]


def _candidates(connection: Connection, task_types: list[str] | None, limit: int, full: set[str]) -> list:
    query = _NEXT_ANY if task_types is None else _NEXT_OF_TYPES
    params = dict(limit=limit) if task_types is None else dict(types=task_types, limit=limit)
    if full:
        query = query.where(sa.or_(sql_queue.c.limit_key.is_(None), sql_queue.c.limit_key.notin_(sorted(full))))
    return connection.execute(query, params).all()


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
    query = (sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority, tasks.c.limit_key)
             .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id)
                          .outerjoin(sql_queue, sql_queue.c.attempt_id == attempts.c.id))
             .where(attempts.c.state == states.A_QUEUED, attempts.c.queue == carrier,
                    attempts.c.task_type.in_(task_types), attempts.c.queued_at <= queued_before,
                    sql_queue.c.id.is_(None))
             .order_by(attempts.c.id))
    if condition is not True:
        query = query.where(condition)
    return [dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority,
                 limit_key=row.limit_key) for row in connection.execute(query)]


def total(connection: Connection, task_types: list[str]) -> int:
    return connection.execute(sa.select(sa.func.count()).select_from(sql_queue)
                              .where(sql_queue.c.task_type.in_(task_types))).scalar()


# The claim's statements, built once: a worker runs them for every batch it takes.
_NEXT_ANY = (
    sa.select(sql_queue.c.id, sql_queue.c.attempt_id, sql_queue.c.limit_key).order_by(sql_queue.c.rank, sql_queue.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer, literal_execute=True)).with_for_update(skip_locked=True)
)
_NEXT_OF_TYPES = (
    sa.select(sql_queue.c.id, sql_queue.c.attempt_id, sql_queue.c.limit_key)
    .where(sql_queue.c.task_type.in_(sa.bindparam("types", expanding=True)))
    .order_by(sql_queue.c.rank, sql_queue.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer, literal_execute=True)).with_for_update(skip_locked=True)
)
_TAKE = sql_queue.delete().where(sql_queue.c.id.in_(sa.bindparam("ids", expanding=True)))
