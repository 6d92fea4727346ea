"""Keeping the SQL queue's table compact on PostgreSQL, from the scheduler daemon.

Every claim deletes rows of ``eas_sql_queue``; on PostgreSQL they stay as dead tuples, and dead index entries
at the front of the claim's index, until a VACUUM. The table's own autovacuum settings (schema version 6)
bound that by autovacuum's naptime (a minute as shipped); the daemon also looks every
:data:`CHECK_EVERY_S` seconds (one statistics read) and runs ``VACUUM (ANALYZE) eas_sql_queue`` itself once
:data:`DEAD_ROWS` rows are dead: a small table, so milliseconds. Nothing on SQLite or MariaDB/MySQL (no dead
tuples there; no statement is sent). Several schedulers may do it at once: harmless.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from eas_controller.database import dialects

log = logging.getLogger("eas.scheduler")

TABLE = "eas_sql_queue"
#: How often the daemon reads the queue table's dead-row count (the server refreshes it about once a second).
CHECK_EVERY_S = 1.0
#: Dead rows that make it vacuum the table.
DEAD_ROWS = 2000


class QueueVacuum:
    def __init__(self, engine: Engine, every: float = CHECK_EVERY_S, dead_rows: int = DEAD_ROWS):
        self.engine = engine
        self.every = every
        self.dead_rows = dead_rows
        self.enabled = dialects.has_table_vacuum(engine)
        self.checked_at = 0.0
        self.vacuums = 0

    def run_if_due(self, now: float | None = None) -> bool:
        """Check (and vacuum) when :attr:`every` seconds have passed; True if it vacuumed. Never raises a
        database error: the next check tries again."""
        now = time.time() if now is None else now
        if not self.enabled or now - self.checked_at < self.every:
            return False
        self.checked_at = now
        try:
            dead = dialects.dead_rows(self.engine, TABLE) or 0
            if dead < self.dead_rows:
                return False
            started = time.perf_counter()
            dialects.vacuum(self.engine, TABLE)
        except DBAPIError as error:
            log.debug("queue table maintenance skipped: %s", str(error.orig).splitlines()[0][:200])
            return False
        self.vacuums += 1
        log.debug("vacuumed %s: %d dead rows, %.1f ms", TABLE, dead, (time.perf_counter() - started) * 1000)
        return True
