"""The SQL queue: queued attempts are rows of a narrow table, claimed with SELECT ... FOR UPDATE SKIP LOCKED.

A claim is one short transaction: lock up to ``limit`` rows in (rank, id) order skipping rows other
workers hold, delete them, mark their attempts running with a lease. The table holds only what is queued
now, so claiming costs the same with ten or ten million finished tasks. On SQLite the write transaction
begins IMMEDIATE, which serialises claimers instead (SQLite has one writer anyway). The statements live in
:mod:`eas_controller.store.sql_queue` and :mod:`eas_controller.store.attempts`.
"""

from __future__ import annotations

import time
from typing import Iterable

from sqlalchemy.engine import Connection, Engine

from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.queues.base import Queue
from eas_controller.store import attempts as attempt_store
from eas_controller.store import sql_queue as queue_store


class SqlQueue(Queue):
    name = "sql"
    in_database = True

    def __init__(self, engine: Engine):
        self.engine = engine

    def enqueue(self, connection: Connection, entries: list[dict]) -> None:
        queue_store.insert(connection, entries)

    def claim(self, worker: dict, task_types: Iterable[str] | None, limit: int, lease_seconds: float,
              wait: bool = True) -> list[dict]:
        task_types = sorted(task_types) if task_types is not None else None
        if limit < 1 or task_types == []:
            return []

        def body(connection: Connection) -> list[dict]:
            attempt_ids = queue_store.take(connection, task_types, limit)
            return attempt_store.start(connection, attempt_ids, worker, lease_seconds) if attempt_ids else []

        return run_transaction(self.engine, body, attempts=0)

    def remove(self, connection: Connection, attempt_ids: list[int]) -> None:
        queue_store.remove(connection, attempt_ids)

    def carried(self, task_types: Iterable[str]) -> dict[str, dict]:
        task_types = list(task_types)
        with read_transaction(self.engine) as connection:
            counts = queue_store.counts(connection, task_types)
        return {task_type: dict(in_queue=counts.get(task_type, 0), consumers=None) for task_type in task_types}

    def resync(self, task_types: Iterable[str], condition, min_age: float = 0.0, dry_run: bool = False) -> dict:
        """Queue rows for queued ``sql`` attempts that lack one (after a restore or a hand edit); drop rows
        whose attempt is not queued any more."""
        task_types = sorted(set(task_types))

        def body(connection: Connection) -> dict:
            stale = queue_store.stale_rows(connection, task_types, self.name)
            missing = [] if condition is None else queue_store.missing_entries(
                connection, task_types, self.name, condition, time.time() - min_age)
            total = queue_store.total(connection, task_types)
            if not dry_run:
                queue_store.delete_rows(connection, stale)
                self.enqueue(connection, missing)
            return dict(messages=total, dropped=len(stale), missing=[row["attempt_id"] for row in missing],
                        republished=0 if dry_run else len(missing))

        return run_transaction(self.engine, body)
