"""The workers table: a row per worker process, its capabilities, free slots and when it was last seen."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.schema import workers

RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"


def register(connection: Connection, name: str, host: str, pid: int, capabilities: list[str], cpus: float, gpus: int,
             memory_gb: float, concurrency: int, labels: dict | None = None) -> int:
    """A new worker row (a restarted worker gets a new one: its old attempts stay its old row's)."""
    now = time.time()
    return connection.execute(workers.insert().values(
        name=name, host=host, pid=pid, capabilities=json.dumps(sorted(capabilities)), cpus=cpus, gpus=gpus,
        memory_gb=memory_gb, concurrency=concurrency, free_slots=concurrency, state=RUNNING, started_at=now,
        last_seen=now, labels=json.dumps(labels) if labels else None,
    )).inserted_primary_key[0]


def heartbeat(connection: Connection, worker_id: int, now: float, free_slots: int, capabilities: list[str],
              stopping: bool) -> None:
    connection.execute(workers.update().where(workers.c.id == worker_id).values(
        last_seen=now, free_slots=free_slots, capabilities=json.dumps(sorted(capabilities)),
        state=STOPPING if stopping else RUNNING))


def mark_stopped(connection: Connection, worker_id: int) -> None:
    connection.execute(workers.update().where(workers.c.id == worker_id).values(
        state=STOPPED, free_slots=0, last_seen=time.time()))


def unstopped_on_host(connection: Connection, host: str, other_than: int | None = None) -> list:
    """Rows of workers on ``host`` not marked stopped (id, name, pid, started_at), locked."""
    query = sa.select(workers.c.id, workers.c.name, workers.c.pid, workers.c.started_at).where(
        workers.c.host == host, workers.c.state != STOPPED)
    if other_than is not None:
        query = query.where(workers.c.id != other_than)
    return connection.execute(query.with_for_update()).all()
