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

from eas_controller import lifecycle
from eas_controller.database.engine import run_transaction
from eas_controller.database.schema import sql_queue
from eas_controller.queues.base import Queue


class SqlQueue(Queue):
    name = "sql"

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
            query = sa.select(sql_queue.c.id, sql_queue.c.attempt_id).order_by(sql_queue.c.rank, sql_queue.c.id)
            if task_types is not None:
                query = query.where(sql_queue.c.task_type.in_(task_types))
            rows = connection.execute(query.limit(limit).with_for_update(skip_locked=True)).all()
            if not rows:
                return []
            connection.execute(sql_queue.delete().where(sql_queue.c.id.in_([row.id for row in rows])))
            return lifecycle.start_attempts(connection, [row.attempt_id for row in rows], worker, lease_seconds)

        return run_transaction(self.engine, body, attempts=0)

    def remove(self, connection: Connection, attempt_ids: list[int]) -> None:
        for start in range(0, len(attempt_ids), 500):
            connection.execute(sql_queue.delete().where(sql_queue.c.attempt_id.in_(attempt_ids[start : start + 500])))
