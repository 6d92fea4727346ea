"""Workers: who is live, what each runs and offers, what it is doing now and when it was last seen.

A worker is live while it is not stopped and its heartbeat is recent (the window the worker's own resource
check uses); anything else is listed as dead.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.capacity import LIVE_WINDOW_S
from eas_controller.database.schema import attempts, workers

WORKER_COLUMNS = ["worker_id", "name", "host", "pid", "live", "state", "capabilities", "cpus", "gpus", "memory_gb",
                  "concurrency", "free_slots", "current_attempts", "last_seen", "last_seen_s_ago", "labels"]


def is_live(row, now: float) -> bool:
    return row.state != "stopped" and row.last_seen >= now - LIVE_WINDOW_S


def worker_list(connection: Connection, live_only: bool = False, limit: int = 500,
                now: float | None = None) -> list[dict]:
    """Workers, most recently seen first, with the attempts each is running now."""
    now = time.time() if now is None else now
    query = sa.select(workers).order_by(workers.c.last_seen.desc(), workers.c.id.desc()).limit(limit)
    if live_only:
        query = query.where(workers.c.state != "stopped", workers.c.last_seen >= now - LIVE_WINDOW_S)
    rows = connection.execute(query).all()
    running: dict[int, list[int]] = {}
    if rows:
        for attempt_id, worker_id in connection.execute(
                sa.select(attempts.c.id, attempts.c.worker_id).where(attempts.c.state == states.A_RUNNING,
                                                                     attempts.c.worker_id.in_([r.id for r in rows]))):
            running.setdefault(worker_id, []).append(attempt_id)
    return [dict(worker_id=row.id, name=row.name, host=row.host, pid=row.pid, live=is_live(row, now), state=row.state,
                 capabilities=json.loads(row.capabilities), cpus=row.cpus, gpus=row.gpus, memory_gb=row.memory_gb,
                 concurrency=row.concurrency, free_slots=row.free_slots,
                 current_attempts=sorted(running.get(row.id, [])), last_seen=row.last_seen,
                 last_seen_s_ago=round(now - row.last_seen, 1), labels=json.loads(row.labels) if row.labels else {})
            for row in rows]


def live_workers(connection: Connection, now: float | None = None) -> list[dict]:
    return worker_list(connection, live_only=True, now=now)
