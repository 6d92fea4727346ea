"""The SQL queue: queued attempts are rows of a narrow table, claimed with SELECT ... FOR UPDATE SKIP LOCKED.

A claim is one short transaction: lock up to ``limit`` rows in (rank, id) order skipping rows other
workers hold, delete them, mark their attempts running with a lease. The table holds only what is queued
now, so claiming costs the same with ten or ten million finished tasks. On SQLite the write transaction
begins IMMEDIATE, which serialises claimers instead (SQLite has one writer anyway).
"""

from __future__ import annotations

import time
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eas_controller import lifecycle, states
from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.database.schema import attempts, sql_queue, tasks
from eas_controller.queues.base import Queue


class SqlQueue(Queue):
    name = "sql"
    in_database = True

    def __init__(self, engine: Engine):
        self.engine = engine

    def enqueue(self, connection: Connection, entries: list[dict]) -> None:
        if not entries:
            return
        now = time.time()
        connection.execute(
            sql_queue.insert(),
            [
                dict(attempt_id=e["attempt_id"], task_type=e["task_type"], rank=-int(e.get("priority", 0)), enqueued_at=now)
                for e in entries
            ],
        )

    def claim(self, worker: dict, task_types: Iterable[str] | None, limit: int, lease_seconds: float) -> list[dict]:
        task_types = sorted(task_types) if task_types is not None else None
        if limit < 1 or task_types == []:
            return []

        def body(connection: Connection) -> list[dict]:
            if task_types is None:
                rows = connection.execute(_NEXT_ANY, dict(limit=limit)).all()
            else:
                rows = connection.execute(_NEXT_OF_TYPES, dict(types=task_types, limit=limit)).all()
            if not rows:
                return []
            connection.execute(_TAKE, dict(ids=[row.id for row in rows]))
            return lifecycle.start_attempts(connection, [row.attempt_id for row in rows], worker, lease_seconds)

        return run_transaction(self.engine, body, attempts=0)

    def remove(self, connection: Connection, attempt_ids: list[int]) -> None:
        for start in range(0, len(attempt_ids), 500):
            connection.execute(sql_queue.delete().where(sql_queue.c.attempt_id.in_(attempt_ids[start : start + 500])))

    def carried(self, task_types: Iterable[str]) -> dict[str, dict]:
        task_types = list(task_types)
        with read_transaction(self.engine) as connection:
            counts = dict(connection.execute(
                sa.select(sql_queue.c.task_type, sa.func.count()).where(sql_queue.c.task_type.in_(task_types))
                .group_by(sql_queue.c.task_type)).all())
        return {task_type: dict(in_queue=counts.get(task_type, 0), consumers=None) for task_type in task_types}

    def resync(self, task_types: Iterable[str], condition, min_age: float = 0.0, dry_run: bool = False) -> dict:
        """Queue rows for queued ``sql`` attempts that lack one (after a restore or a hand edit); drop rows
        whose attempt is not queued any more."""
        task_types = sorted(set(task_types))

        def body(connection: Connection) -> dict:
            stale = connection.execute(
                sa.select(sql_queue.c.id).select_from(sql_queue.outerjoin(attempts, attempts.c.id == sql_queue.c.attempt_id))
                .where(sql_queue.c.task_type.in_(task_types),
                       sa.or_(attempts.c.id.is_(None), attempts.c.state != states.A_QUEUED, attempts.c.queue != self.name))
            ).scalars().all()
            query = (sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority)
                     .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id)
                                  .outerjoin(sql_queue, sql_queue.c.attempt_id == attempts.c.id))
                     .where(attempts.c.state == states.A_QUEUED, attempts.c.queue == self.name,
                            attempts.c.task_type.in_(task_types), attempts.c.queued_at <= time.time() - min_age,
                            sql_queue.c.id.is_(None))
                     .order_by(attempts.c.id))
            if condition is not True and condition is not None:
                query = query.where(condition)
            missing = [] if condition is None else [
                dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority)
                for row in connection.execute(query)]
            total = connection.execute(sa.select(sa.func.count()).select_from(sql_queue)
                                       .where(sql_queue.c.task_type.in_(task_types))).scalar()
            if not dry_run:
                for start in range(0, len(stale), 500):
                    connection.execute(sql_queue.delete().where(sql_queue.c.id.in_(stale[start:start + 500])))
                self.enqueue(connection, missing)
            return dict(messages=total, dropped=len(stale), missing=[row["attempt_id"] for row in missing],
                        republished=0 if dry_run else len(missing))

        return run_transaction(self.engine, body)


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
