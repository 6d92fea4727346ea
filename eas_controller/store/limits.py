"""Concurrency limits by key: how many attempts of a key may run, and how many run now.

Each key has a row in ``eas_concurrency_limits`` (its ``max_running``), written when tasks with that key
are created. A claim that would start attempts of a key locks the key's row ``FOR UPDATE`` (SQLite: the
claim's write lock serialises claims anyway), counts the key's running attempts, and starts at most the
difference, all in the transaction that marks them running. Two claims of one key therefore take turns,
and the count can never pass the maximum.

The slots are not a counter: an attempt holds one while it is ``running``. Whatever transaction moves it
out of running (finished, failed, stalled after its worker was lost, released, cancelled) frees its slot
as it commits, so no path can leak one.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.dialects import insert_ignoring_duplicates
from eas_controller.database.engine import chunks
from eas_controller.database.schema import attempts, concurrency_limits, tasks


def declare(connection: Connection, maxima: dict[str, int], now: float | None = None) -> None:
    """Make sure every key has its row; a key declared with another maximum takes the new one."""
    if not maxima:
        return
    now = now or time.time()
    existing: dict[str, int] = {}
    for chunk in chunks(sorted(maxima)):
        existing.update(connection.execute(sa.select(concurrency_limits.c.key, concurrency_limits.c.max_running)
                                           .where(concurrency_limits.c.key.in_(chunk))).all())
    missing = [dict(key=key, max_running=value, updated_at=now) for key, value in sorted(maxima.items())
               if key not in existing]
    insert_ignoring_duplicates(connection, concurrency_limits, missing)  # a concurrent submission may add one too
    for key, value in sorted(maxima.items()):
        if key in existing and existing[key] != value:
            connection.execute(concurrency_limits.update().where(concurrency_limits.c.key == key)
                               .values(max_running=value, updated_at=now))


def free_slots(connection: Connection, keys) -> dict[str, int]:
    """{key: slots free now} for ``keys``, with the keys' rows locked until the caller's transaction ends:
    another claim of the same keys waits here, then counts what this one started. A key without a row
    (tasks restored without their limits) is not limited."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    maxima: dict[str, int] = {}
    for chunk in chunks(keys):
        maxima.update(connection.execute(
            sa.select(concurrency_limits.c.key, concurrency_limits.c.max_running)
            .where(concurrency_limits.c.key.in_(chunk)).order_by(concurrency_limits.c.key).with_for_update()).all())
    running = running_counts(connection, list(maxima))
    free = {key: max(0, maxima[key] - running.get(key, 0)) for key in maxima}
    free.update({key: 1 << 30 for key in keys if key not in maxima})
    return free


def running_counts(connection: Connection, keys: list[str] | None = None) -> dict[str, int]:
    """{key: running attempts} (of ``keys``, or of every key with one running). Reads the running attempts
    through their state index, so it costs what is running, not the history."""
    query = (sa.select(tasks.c.limit_key, sa.func.count()).select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
             .where(attempts.c.state == states.A_RUNNING, tasks.c.limit_key.isnot(None)).group_by(tasks.c.limit_key))
    if keys is None:
        return dict(connection.execute(query).all())
    counts: dict[str, int] = {}
    for chunk in chunks(sorted(keys)):
        counts.update(connection.execute(query.where(tasks.c.limit_key.in_(chunk))).all())
    return counts


def admit(connection: Connection, keyed: list[tuple[int, str | None]]) -> tuple[list[int], list[int]]:
    """Of ``keyed`` ((attempt id, key or None), in the order they should start), those that may start now and
    those whose key is full. Locks the keys' rows (see :func:`free_slots`)."""
    free = free_slots(connection, [key for _attempt, key in keyed if key is not None])
    admitted, refused = [], []
    for attempt_id, key in keyed:
        if key is None:
            admitted.append(attempt_id)
        elif free[key] > 0:
            free[key] -= 1
            admitted.append(attempt_id)
        else:
            refused.append(attempt_id)
    return admitted, refused


def keys_of_attempts(connection: Connection, attempt_ids: list[int]) -> dict[int, str]:
    """{attempt id: key} of those queued attempts whose task has a concurrency limit."""
    found: dict[int, str] = {}
    for chunk in chunks(sorted(set(attempt_ids))):
        found.update(connection.execute(
            sa.select(attempts.c.id, tasks.c.limit_key).join(tasks, tasks.c.id == attempts.c.task_id)
            .where(attempts.c.id.in_(chunk), attempts.c.state == states.A_QUEUED, tasks.c.limit_key.isnot(None))).all())
    return found


def held_with_room(connection: Connection, carrier: str, limit: int = 1000) -> list[dict]:
    """Queued attempts carried by ``carrier`` (held back because their key was full) whose key has a free
    slot now, at most as many per key as it has free and not already promised to attempts in flight (queued,
    not held): queue entries (attempt_id, task_id, task_type, priority, limit_key), highest priority first.
    Read without locks: the claim checks again."""
    rows = connection.execute(
        sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority, tasks.c.limit_key)
        .join(tasks, tasks.c.id == attempts.c.task_id)
        .where(attempts.c.queue == carrier, attempts.c.state == states.A_QUEUED)
        .order_by(tasks.c.priority.desc(), attempts.c.id).limit(limit)).all()
    if not rows:
        return []
    keys = sorted({row.limit_key for row in rows if row.limit_key is not None})
    maxima: dict[str, int] = {}
    queued: dict[str, int] = {}
    held: dict[str, int] = {}
    for chunk in chunks(keys):
        maxima.update(connection.execute(sa.select(concurrency_limits.c.key, concurrency_limits.c.max_running)
                                         .where(concurrency_limits.c.key.in_(chunk))).all())
        queued.update(connection.execute(sa.select(tasks.c.limit_key, sa.func.count()).where(
            tasks.c.limit_key.in_(chunk), tasks.c.state == states.QUEUED).group_by(tasks.c.limit_key)).all())
        held.update(connection.execute(
            sa.select(tasks.c.limit_key, sa.func.count()).select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
            .where(attempts.c.queue == carrier, attempts.c.state == states.A_QUEUED, tasks.c.limit_key.in_(chunk))
            .group_by(tasks.c.limit_key)).all())
    running = running_counts(connection, keys)
    room = {key: maxima.get(key, 1 << 30) - running.get(key, 0) - max(0, queued.get(key, 0) - held.get(key, 0))
            for key in keys}
    entries = []
    for row in rows:
        if row.limit_key is not None:
            if room[row.limit_key] <= 0:
                continue
            room[row.limit_key] -= 1
        entries.append(dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority,
                            limit_key=row.limit_key))
    return entries


# -- reads for diagnostics ---------------------------------------------------------------------------------

def limit_of(connection: Connection, key: str) -> int | None:
    return connection.execute(sa.select(concurrency_limits.c.max_running)
                              .where(concurrency_limits.c.key == key)).scalar()


def running_attempts_of(connection: Connection, key: str) -> list[int]:
    """Ids of the running attempts whose task has this key, oldest first."""
    return connection.execute(
        sa.select(attempts.c.id).join(tasks, tasks.c.id == attempts.c.task_id)
        .where(attempts.c.state == states.A_RUNNING, tasks.c.limit_key == key).order_by(attempts.c.id)).scalars().all()
