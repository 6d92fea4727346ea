"""The attempts table: creating attempts, claiming them, their leases, and how each one ends.

Every write a worker makes about an attempt is fenced: it names the worker (``owner``) and the state the
attempt must still be in, so a worker that comes back after being presumed dead cannot overwrite what
happened meanwhile. The operations report the attempts they did not move and the state those were in.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.dialects import insert_rows_returning_ids, server_epoch, supports_multi_row_case_update
from eas_controller.database.engine import chunks
from eas_controller.database.schema import attempts, task_dependencies, tasks
from eas_controller.store import metadata as metadata_store
from eas_controller.store import tasks as task_store
from eas_controller.store.moves import MISSING, Moved, StaleStates, current_states, guarded_update

START_FROM = states.attempt_move(states.A_QUEUED, states.A_RUNNING)
RENEW_FROM = states.attempt_move(states.A_RUNNING, states.A_RUNNING)
STALL_FROM = states.attempt_move(states.A_RUNNING, states.A_STALLED)
FINISH_FROM = states.attempt_move(states.A_RUNNING, (states.A_SUCCEEDED, states.A_FAILED))
RELEASE_FROM = states.attempt_move(states.A_RUNNING, states.A_CANCELLED)
CANCEL_QUEUED_FROM = states.attempt_move(states.A_QUEUED, states.A_CANCELLED)
CANCEL_RUNNING_FROM = states.attempt_move(states.A_RUNNING, states.A_CANCELLED)
CARRIER_FROM = states.attempt_move(states.A_QUEUED, states.A_QUEUED)

#: The columns a completion writes, each from the ``b_<column>`` value of its update.
RESULT_COLUMNS = ("state", "started_at", "ended_at", "exit_status", "wall_s", "cpu_s", "cpu_children_s", "error_text")


def create(connection: Connection, task_rows: list, queue_name: str, now: float | None = None,
           current: dict[int, str] | None = None) -> list[dict]:
    """New queued attempts for ready tasks (rows with id, task_type, attempt_count, priority), which become
    queued. Returns the queue entries (attempt_id, task_id, task_type, priority)."""
    now = now or time.time()
    if not task_rows:
        return []
    moved = set(task_store.mark_queued(connection, [row.id for row in task_rows], now, current).moved)
    task_rows = [row for row in task_rows if row.id in moved]
    attempt_ids = insert_rows_returning_ids(connection, attempts, [
        dict(task_id=row.id, number=row.attempt_count + 1, task_type=row.task_type, state=states.A_QUEUED,
             queue=queue_name, queued_at=now)
        for row in task_rows
    ])
    return [dict(attempt_id=attempt_id, task_id=row.id, task_type=row.task_type, priority=row.priority,
                 limit_key=getattr(row, "limit_key", None))
            for attempt_id, row in zip(attempt_ids, task_rows)]


def start(connection: Connection, attempt_ids: list[int], worker: dict, lease_seconds: float) -> list[dict]:
    """Claim queued attempts for ``worker`` (queued -> running with a lease; their tasks queued -> running) and
    return what it needs to run them. Attempts no longer queued (a redelivered message, a cancelled task)
    are left alone and not returned."""
    if not attempt_ids:
        return []
    now = time.time()
    connection.execute(_START, dict(
        ids=attempt_ids, now=now, lease=lease_seconds, b_worker_id=worker["id"], b_worker_name=worker["name"],
        b_host=worker["host"], b_pid=worker["pid"]))
    rows = connection.execute(_STARTED, dict(ids=attempt_ids, worker_id=worker["id"], now=now)).all()
    if rows:
        task_store.mark_running(connection, [row.task_id for row in rows], now,
                                current={row.task_id: row.task_state for row in rows})
    requested = metadata_store.requested_of(connection, [row.task_id for row in rows if row.has_requested])
    claimed = []
    for row in rows:
        item = row._asdict()
        del item["has_requested"], item["task_state"]
        item["description"] = json.loads(item["description"])
        item["metadata"] = json.loads(item["metadata"])
        item["requested_metadata"] = requested.get(row.task_id, {})
        claimed.append(item)
    return claimed


# The claim's statements, built once (a claim runs them for every batch a worker takes).
_START = (
    attempts.update()
    .where(attempts.c.id.in_(sa.bindparam("ids", expanding=True)), attempts.c.state.in_(START_FROM))
    .values(state=states.A_RUNNING, started_at=sa.bindparam("now"), lease_expires_at=server_epoch() + sa.bindparam("lease"),
            worker_id=sa.bindparam("b_worker_id"), worker_name=sa.bindparam("b_worker_name"), host=sa.bindparam("b_host"),
            pid=sa.bindparam("b_pid"))
)
_STARTED = (
    sa.select(
        attempts.c.id.label("attempt_id"), attempts.c.number, attempts.c.started_at, tasks.c.id.label("task_id"),
        tasks.c.task_type, tasks.c.job_id, tasks.c.job_name, tasks.c.name, tasks.c.working_directory, tasks.c.description,
        tasks.c.metadata, tasks.c.max_attempts, tasks.c.chain_path, tasks.c.state.label("task_state"),
        sa.exists().where(task_dependencies.c.task_id == tasks.c.id, task_dependencies.c.kind == "metadata")
        .label("has_requested"),  # most tasks ask for no metadata: spares them a query
    )
    .join(tasks, tasks.c.id == attempts.c.task_id)
    .where(attempts.c.id.in_(sa.bindparam("ids", expanding=True)), attempts.c.worker_id == sa.bindparam("worker_id"),
           attempts.c.state == states.A_RUNNING, attempts.c.started_at == sa.bindparam("now"))
    .with_for_update()
)


# -- leases ------------------------------------------------------------------------------------------------

def lock_owned(connection: Connection, attempt_ids: list[int], owner: int) -> dict[int, str]:
    """{attempt id: state} of the attempts, locked; one held by another worker says so in its state."""
    return current_states(connection, attempts, attempt_ids, owner=owner)


def renew_leases(connection: Connection, attempt_ids: list[int], owner: int, lease_seconds: float,
                 current: dict[int, str] | None = None) -> Moved:
    """Extend the leases of the running attempts ``owner`` still holds to ``lease_seconds`` from now on the
    database server's clock; the others are reported."""
    return guarded_update(connection, attempts, attempt_ids, RENEW_FROM,
                          dict(lease_expires_at=server_epoch() + lease_seconds), current=current, owner=owner)


def expired(connection: Connection, limit: int) -> list:
    """Running attempts whose lease expired (on the database server's clock), oldest first, locked ``SKIP
    LOCKED``."""
    return connection.execute(
        sa.select(attempts.c.id, attempts.c.task_id, attempts.c.number, attempts.c.worker_name, attempts.c.host,
                  attempts.c.pid, attempts.c.lease_expires_at, attempts.c.state)
        .where(attempts.c.state == states.A_RUNNING, attempts.c.lease_expires_at < server_epoch())
        .order_by(attempts.c.lease_expires_at).limit(limit).with_for_update(skip_locked=True)
    ).all()


def stall(connection: Connection, attempt_id: int, reason: str, now: float, current: dict[int, str] | None = None) -> Moved:
    """running -> stalled: its worker stopped renewing the lease."""
    return guarded_update(connection, attempts, [attempt_id], STALL_FROM, dict(
        state=states.A_STALLED, ended_at=now, error_text=reason), current=current)


def running_of_worker(connection: Connection, worker_id: int) -> list:
    """(id, task_id, number, state) of the attempts a worker holds, locked."""
    return connection.execute(sa.select(attempts.c.id, attempts.c.task_id, attempts.c.number, attempts.c.state)
                              .where(attempts.c.state == states.A_RUNNING, attempts.c.worker_id == worker_id)
                              .with_for_update()).all()


def orphaned(connection: Connection, owner: int, started_before: float, known: list[int]) -> list:
    """Running attempts of ``owner`` started before ``started_before`` that the worker does not know of (a
    claim whose reply was lost with the connection). Read without a lock: locking through the state index
    would lock other workers' rows too (deadlocks with many workers); :func:`release` locks each by id and
    checks its state again."""
    query = sa.select(attempts.c.id, attempts.c.task_id, attempts.c.state).where(
        attempts.c.state == states.A_RUNNING, attempts.c.worker_id == owner, attempts.c.started_at < started_before)
    if known:
        query = query.where(attempts.c.id.notin_(known))
    return connection.execute(query).all()


# -- ending ------------------------------------------------------------------------------------------------

def lock_for_completion(connection: Connection, attempt_ids: list[int]) -> dict[int, object]:
    """The completion's fence: the attempts (state, worker, error text) and their tasks' states, all locked."""
    rows = {}
    for chunk in chunks(sorted(attempt_ids)):
        for row in connection.execute(_LOCK_FOR_COMPLETION, dict(ids=chunk)):
            rows[row.id] = row
    return rows


_LOCK_FOR_COMPLETION = (
    sa.select(attempts.c.id, attempts.c.state, attempts.c.worker_id, attempts.c.error_text,
              attempts.c.task_id, tasks.c.state.label("task_state"))
    .join(tasks, tasks.c.id == attempts.c.task_id).where(attempts.c.id.in_(sa.bindparam("ids", expanding=True)))
    .with_for_update()
)


_FINISH = (
    attempts.update().where(attempts.c.id == sa.bindparam("b_id"),
                            sa.or_(*[attempts.c.state == source for source in FINISH_FROM]),  # no IN: executemany
                            attempts.c.worker_id == sa.bindparam("b_owner"))
    .values(**{column: sa.bindparam("b_" + column) for column in RESULT_COLUMNS})
)


def finish(connection: Connection, updates: list[dict], owner: int, current: dict[int, str]) -> Moved:
    """running -> succeeded or failed, for attempts the caller has fenced: ``current`` holds their states as
    locked (:func:`lock_for_completion`); each update holds ``b_id`` and the ``b_<column>`` values of
    :data:`RESULT_COLUMNS`. Attempts not running under ``owner`` are left alone and reported.

    Where the dialect supports it, one UPDATE for the whole group, each column a ``CASE id WHEN ...``
    (MySQL/MariaDB drivers send an executemany as one round trip per row); elsewhere one prepared UPDATE
    per row (psycopg pipelines an executemany; SQLite runs in process)."""
    result = Moved(refused={row["b_id"]: current.get(row["b_id"], MISSING) for row in updates
                            if current.get(row["b_id"]) not in FINISH_FROM})
    updates = [row for row in updates if row["b_id"] not in result.refused]
    if not updates:
        return result
    if len(updates) == 1 or not supports_multi_row_case_update(connection):
        changed = connection.execute(_FINISH, [dict(row, b_owner=owner) for row in updates]).rowcount
        if connection.dialect.supports_sane_multi_rowcount and changed != len(updates):
            raise StaleStates("finishing %d fenced attempts matched %d rows" % (len(updates), changed))
        result.moved.extend(row["b_id"] for row in updates)
        return result
    for chunk in chunks(updates, _GROUP_SIZES[-1]):
        size = next(size for size in _GROUP_SIZES if size >= len(chunk))
        parameters = {"owner": owner}
        for k in range(size):  # the last row repeated up to the size: the same row, set to the same values
            row = chunk[min(k, len(chunk) - 1)]
            parameters["i%d" % k] = row["b_id"]
            for column in RESULT_COLUMNS:
                parameters["%s%d" % (column, k)] = row["b_" + column]
        changed = connection.execute(_multi_row_finish(size), parameters).rowcount
        if changed != len(chunk):
            raise StaleStates("finishing %d fenced attempts matched %d rows" % (len(chunk), changed))
        result.moved.extend(row["b_id"] for row in chunk)
    return result


_MULTI_ROW_FINISH: dict[int, sa.Update] = {}
#: Groups are padded up to one of these sizes, so that a worker compiles a handful of statements, not one per size.
_GROUP_SIZES = (2, 4, 8, 16, 32, 64)


def _multi_row_finish(rows: int) -> sa.Update:
    """The group UPDATE for ``rows`` attempts, with bound parameters ``i<k>``, ``<column><k>`` and ``owner``.

    Built once per group size and reused: SQLAlchemy then keeps its cache key and compiled form, where a
    statement built afresh from literals cost more Python than everything else a worker does per task."""
    statement = _MULTI_ROW_FINISH.get(rows)
    if statement is None:
        ids = [sa.bindparam("i%d" % k, type_=attempts.c.id.type) for k in range(rows)]
        values = {column: sa.case(*[(attempts.c.id == ids[k], sa.bindparam("%s%d" % (column, k), type_=attempts.c[column].type))
                                    for k in range(rows)], else_=attempts.c[column])
                  for column in RESULT_COLUMNS}
        statement = attempts.update().where(attempts.c.id.in_(ids), attempts.c.state.in_(FINISH_FROM),
                                            attempts.c.worker_id == sa.bindparam("owner")).values(**values)
        _MULTI_ROW_FINISH[rows] = statement
    return statement


def release(connection: Connection, attempt_id: int, task_id: int, now: float, note: str, wall_s: float | None = None,
            current: dict[int, str] | None = None, owner: int | None = None) -> Moved:
    """Give a running attempt back: it ends ``cancelled`` (not a failure) and its task is ready again with
    the attempt not counted. With ``owner``, only while that worker holds it."""
    moved = guarded_update(connection, attempts, [attempt_id], RELEASE_FROM, dict(
        state=states.A_CANCELLED, ended_at=now, wall_s=wall_s, error_text=note), current=current, owner=owner)
    if moved.moved:
        task_store.release_running(connection, [task_id], now)
    return moved


def cancel_queued(connection: Connection, attempt_ids: list[int], reason: str, now: float) -> list[tuple[int, int]]:
    """queued -> cancelled (taken out of the queue). Returns (attempt id, task id) of those that were queued."""
    current = current_states(connection, attempts, attempt_ids)
    moved = guarded_update(connection, attempts, attempt_ids, CANCEL_QUEUED_FROM, dict(
        state=states.A_CANCELLED, ended_at=now, error_text=reason), current=current)
    return task_ids_of(connection, moved.moved)


def cancel_running(connection: Connection, attempt_ids: list[int], reason: str, now: float) -> Moved:
    """running -> cancelled: the worker's heartbeat notices, stops the task and discards its results."""
    return guarded_update(connection, attempts, attempt_ids, CANCEL_RUNNING_FROM, dict(
        state=states.A_CANCELLED, ended_at=now, error_text=reason))


def set_carrier(connection: Connection, attempt_ids: list[int], carrier: str, only_from: str | None = None) -> int:
    """Say which queue carries queued attempts (``sql``, ``amqp``, ``amqp-new``, ``amqp-lim``); ``only_from``: only those
    carried by that one now. Attempts no longer queued are left alone. Returns how many were relabelled."""
    changed = 0
    for chunk in chunks(attempt_ids):
        statement = attempts.update().where(attempts.c.id.in_(chunk), attempts.c.state.in_(CARRIER_FROM))
        if only_from is not None:
            statement = statement.where(attempts.c.queue == only_from)
        changed += connection.execute(statement.values(queue=carrier)).rowcount
    return changed


def relabel_queued(connection: Connection, carrier_from: str, carrier: str) -> int:
    """Every queued attempt carried by ``carrier_from`` is now carried by ``carrier`` (after a restore)."""
    return connection.execute(attempts.update().where(attempts.c.state.in_(CARRIER_FROM), attempts.c.queue == carrier_from)
                              .values(queue=carrier)).rowcount


# -- reads -------------------------------------------------------------------------------------------------

def task_ids_of(connection: Connection, attempt_ids: list[int]) -> list[tuple[int, int]]:
    found = []
    for chunk in chunks(sorted(attempt_ids)):
        found.extend(connection.execute(sa.select(attempts.c.id, attempts.c.task_id).where(attempts.c.id.in_(chunk))).all())
    return [(row[0], row[1]) for row in found]


def state_of(connection: Connection, attempt_id: int) -> str | None:
    return connection.execute(sa.select(attempts.c.state).where(attempts.c.id == attempt_id)).scalar()


def queued_entries(connection: Connection, carriers: list[str], condition=None, task_types=None,
                   queued_before: float | None = None, limit: int | None = None) -> list[dict]:
    """Queue entries (attempt_id, task_id, task_type, priority) of queued attempts carried by ``carriers``."""
    query = (sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority, tasks.c.limit_key)
             .join(tasks, tasks.c.id == attempts.c.task_id)
             .where(attempts.c.state == states.A_QUEUED, attempts.c.queue.in_(carriers)).order_by(attempts.c.id))
    if condition is not None and condition is not True:
        query = query.where(condition)
    if task_types is not None:
        query = query.where(attempts.c.task_type.in_(task_types))
    if queued_before is not None:
        query = query.where(attempts.c.queued_at <= queued_before)
    if limit is not None:
        query = query.limit(limit)
    return [dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority,
                 limit_key=row.limit_key) for row in connection.execute(query)]


def count_expired(connection: Connection) -> int:
    """Running attempts whose lease has expired, on the database server's clock."""
    return connection.execute(sa.select(sa.func.count()).select_from(attempts).where(
        attempts.c.state == states.A_RUNNING, attempts.c.lease_expires_at < server_epoch())).scalar()


def count_queued(connection: Connection) -> int:
    return connection.execute(sa.select(sa.func.count()).select_from(attempts)
                              .where(attempts.c.state == states.A_QUEUED)).scalar()


def task_types_of(connection: Connection, attempt_ids: list[int]) -> set[str]:
    found: set[str] = set()
    for chunk in chunks(attempt_ids):
        found.update(connection.execute(sa.select(attempts.c.task_type).where(attempts.c.id.in_(chunk)).distinct()).scalars())
    return found


def queued_among(connection: Connection, attempt_ids: list[int], carriers: list[str]) -> set[int]:
    """Those of ``attempt_ids`` that are queued and carried by one of ``carriers``."""
    found: set[int] = set()
    for chunk in chunks(attempt_ids):
        found.update(connection.execute(sa.select(attempts.c.id).where(
            attempts.c.id.in_(chunk), attempts.c.state == states.A_QUEUED, attempts.c.queue.in_(carriers))).scalars())
    return found


def queued_or_running_of_tasks(connection: Connection, task_ids: list[int]) -> list:
    """(id, task_id, state) of the live attempts of these tasks."""
    rows = []
    for chunk in chunks(task_ids):
        rows.extend(connection.execute(sa.select(attempts.c.id, attempts.c.task_id, attempts.c.state).where(
            attempts.c.task_id.in_(chunk), attempts.c.state.in_([states.A_QUEUED, states.A_RUNNING]))).all())
    return rows
