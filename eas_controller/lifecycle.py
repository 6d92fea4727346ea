"""State changes of tasks and attempts that several parts share, each as one small named function.

Everything here runs inside the caller's transaction. Readiness is incremental: each task keeps a count of
unmet dependencies, decremented in the same transaction that finishes the task it waited for, so the
scheduler only ever looks at tasks that became ready.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.engine import chunks
from eas_controller.database.schema import attempts, control_progress, metadata_items, task_dependencies, tasks

_VALUE_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}


def release_dependants(connection: Connection, task_ids: list[int], now: float | None = None) -> list[int]:
    """Mark the tasks ``task_ids`` as delivered to the tasks that wait for them; those with nothing left to
    wait for become ready. Returns the ids of the plain (not control-flow) dependants: the ones that may have
    become ready to queue.

    Three statements however many tasks finished together (a worker records a group of completions in one
    transaction): find the dependants with how many of their dependencies are among ``task_ids``, mark the
    dependency rows satisfied, count each plain dependant down by that many (one whose last dependencies
    these were becomes ready in the same UPDATE; one UPDATE per distinct amount, usually one).

    Control-flow dependants (every chain or loop waits for its children) are not updated here: all their
    children's completions would queue up on that one row's lock. Their deliveries are appended to
    ``control_progress`` and the scheduler counts them down in bulk (:func:`count_control_progress`); it has
    to act on a control task that becomes ready anyway.
    """
    now = now or time.time()
    delivered: dict[int, int] = {}  # dependant -> how many of its dependencies finished now
    plain: set[int] = set()
    for chunk in chunks(task_ids):
        rows = connection.execute(_DELIVERED, {"ids": chunk})
        for dependant, is_control, count in rows:
            delivered[dependant] = delivered.get(dependant, 0) + count
            if not is_control:
                plain.add(dependant)
    if not delivered:
        return []
    for chunk in chunks(task_ids):
        connection.execute(_SATISFIED, {"ids": chunk})
    control = [dict(task_id=dependant, delivered=count, created_at=now)
               for dependant, count in sorted(delivered.items()) if dependant not in plain]
    if control:
        connection.execute(control_progress.insert(), control)
    count_down(connection, {dependant: delivered[dependant] for dependant in plain}, now)
    return sorted(plain)


def count_down(connection: Connection, delivered: dict[int, int], now: float) -> None:
    """Count tasks' unmet dependencies down ({task id: how many were delivered}); those that reach zero
    become ready (a waiting task, or a running control task whose children are all done)."""
    by_amount: dict[int, list[int]] = {}
    for dependant, count in delivered.items():
        by_amount.setdefault(count, []).append(dependant)
    for amount, dependant_ids in sorted(by_amount.items()):
        for chunk in chunks(sorted(dependant_ids)):
            connection.execute(_COUNT_DOWN, {"ids": chunk, "amount": amount, "now": now})


def count_control_progress(connection: Connection, limit: int) -> int:
    """Count down control tasks by the deliveries completions appended to ``control_progress`` (locked
    ``SKIP LOCKED``, so two schedulers never count one twice), then delete them. Returns how many rows."""
    rows = connection.execute(
        sa.select(control_progress.c.id, control_progress.c.task_id, control_progress.c.delivered)
        .order_by(control_progress.c.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return 0
    delivered: dict[int, int] = {}
    for row in rows:
        delivered[row.task_id] = delivered.get(row.task_id, 0) + row.delivered
    count_down(connection, delivered, time.time())
    ids = [row.id for row in rows]
    for chunk in chunks(ids):
        connection.execute(control_progress.delete().where(control_progress.c.id.in_(chunk)))
    return len(rows)


_DELIVERED = (
    sa.select(task_dependencies.c.task_id, tasks.c.is_control, sa.func.count())
    .join(tasks, tasks.c.id == task_dependencies.c.task_id)
    .where(task_dependencies.c.requires_task_id.in_(sa.bindparam("ids", expanding=True)),
           task_dependencies.c.satisfied.is_(False))
    .group_by(task_dependencies.c.task_id, tasks.c.is_control)
)
_SATISFIED = (
    task_dependencies.update()
    .where(task_dependencies.c.requires_task_id.in_(sa.bindparam("ids", expanding=True)),
           task_dependencies.c.satisfied.is_(False))
    .values(satisfied=True)
)
# The state is assigned first, from the count before this update: MySQL evaluates SET clauses left to right
# with the new values, PostgreSQL and SQLite with the old ones; in this order both agree.
_COUNT_DOWN = (
    tasks.update()
    .where(tasks.c.id.in_(sa.bindparam("ids", expanding=True)))
    .ordered_values(
        (tasks.c.state, sa.case((sa.and_(
            tasks.c.unmet_dependencies == sa.bindparam("amount"),
            sa.or_(tasks.c.state == states.WAITING, sa.and_(tasks.c.state == states.RUNNING, tasks.c.is_control)),
        ), states.READY), else_=tasks.c.state)),
        (tasks.c.unmet_dependencies, tasks.c.unmet_dependencies - sa.bindparam("amount")),
        (tasks.c.updated_at, sa.bindparam("now")),
    )
)


def finish_task(connection: Connection, task_id: int, state: str, error_text: str | None = None) -> None:
    """Set a task's final state; a task that is done releases the tasks waiting for it."""
    now = time.time()
    connection.execute(
        tasks.update().where(tasks.c.id == task_id).values(state=state, error_text=error_text, updated_at=now)
    )
    if state == states.DONE:
        release_dependants(connection, [task_id], now)


def finish_tasks_done(connection: Connection, task_ids: list[int], now: float | None = None) -> list[int]:
    """:func:`finish_task` ``done`` for a group of tasks in a few statements; returns their plain dependants'
    ids (see :func:`release_dependants`)."""
    now = now or time.time()
    for chunk in chunks(task_ids):
        connection.execute(tasks.update().where(tasks.c.id.in_(chunk)).values(state=states.DONE, error_text=None,
                                                                             updated_at=now))
    return release_dependants(connection, task_ids, now)


def ready_plain_tasks(connection: Connection, task_ids: list[int]) -> list:
    """Of ``task_ids``, the plain tasks (not control flow, no late fields, no retry wait) that are ready: what
    a completion may queue at once instead of waiting for the scheduler's next pass. The caller's
    transaction already holds their rows (it just made them ready), so no scheduler can queue them too."""
    rows = []
    for chunk in chunks(task_ids):
        rows.extend(connection.execute(
            sa.select(tasks.c.id, tasks.c.task_type, tasks.c.attempt_count, tasks.c.priority)
            .where(tasks.c.id.in_(chunk), tasks.c.state == states.READY, tasks.c.is_control.is_(False),
                   tasks.c.needs_evaluation.is_(False), tasks.c.not_before.is_(None))
            .order_by(tasks.c.priority.desc(), tasks.c.id)
        ).all())
    return rows


def create_attempts(connection: Connection, task_rows: list, queue_name: str, now: float | None = None) -> list[dict]:
    """New queued attempts for tasks (rows with id, task_type, attempt_count, priority); tasks become queued."""
    now = now or time.time()
    from eas_controller.submission import insert_rows_returning_ids  # one multi-row INSERT per batch

    attempt_ids = insert_rows_returning_ids(connection, attempts, [
        dict(task_id=row.id, number=row.attempt_count + 1, task_type=row.task_type, state=states.A_QUEUED,
             queue=queue_name, queued_at=now)
        for row in task_rows
    ])
    created = [dict(attempt_id=attempt_id, task_id=row.id, task_type=row.task_type, priority=row.priority)
               for attempt_id, row in zip(attempt_ids, task_rows)]
    if task_rows:
        connection.execute(
            tasks.update()
            .where(tasks.c.id.in_([row.id for row in task_rows]))
            .values(state=states.QUEUED, attempt_count=tasks.c.attempt_count + 1, updated_at=now)
        )
    return created


def encode_value(value: Any) -> tuple[str, str]:
    return _VALUE_TYPES.get(type(value), "json"), json.dumps(value)


def write_task_metadata(connection: Connection, task_id: int, attempt_id: int | None, items: dict,
                        replace: bool = True) -> None:
    """Store a task's output metadata, replacing what an earlier attempt wrote (``replace=False``: the caller
    knows there is none, e.g. a first attempt, and saves the DELETE on the hot path)."""
    if replace:
        clear_task_metadata(connection, task_id)
    rows = metadata_rows(task_id, attempt_id, items)
    if rows:
        connection.execute(metadata_items.insert(), rows)


def clear_task_metadata(connection: Connection, task_id: int) -> None:
    """Remove what an earlier attempt of the task wrote as output metadata."""
    connection.execute(
        metadata_items.delete().where(metadata_items.c.task_id == task_id, metadata_items.c.scope == "task"))


def metadata_rows(task_id: int, attempt_id: int | None, items: dict) -> list[dict]:
    """The rows of a task's output metadata (typed values, JSON-encoded)."""
    rows = []
    for key, value in items.items():
        value_type, encoded = encode_value(value)
        rows.append(dict(scope="task", task_id=task_id, attempt_id=attempt_id, key=str(key)[:255], value_type=value_type,
                         value=encoded))
    return rows


def output_metadata(connection: Connection, task_ids: Iterable[int]) -> dict[int, dict]:
    """{task id: {key: value}} of the tasks' output metadata."""
    task_ids = list(task_ids)
    result: dict[int, dict] = {task_id: {} for task_id in task_ids}
    for start in range(0, len(task_ids), 500):
        chunk = task_ids[start : start + 500]
        rows = connection.execute(
            sa.select(metadata_items.c.task_id, metadata_items.c.key, metadata_items.c.value).where(
                metadata_items.c.task_id.in_(chunk), metadata_items.c.scope == "task"
            )
        )
        for row in rows:
            result[row.task_id][row.key] = json.loads(row.value)
    return result


def requested_metadata(connection: Connection, task_id: int) -> dict[str, dict]:
    """What ``requires_metadata_from`` asked for: {sibling name: its output metadata}."""
    return requested_metadata_of(connection, [task_id])[task_id]


def requested_metadata_of(connection: Connection, task_ids: list[int]) -> dict[int, dict[str, dict]]:
    """:func:`requested_metadata` for several tasks in one query (a worker claiming a batch)."""
    deps = task_dependencies
    result: dict[int, dict[str, dict]] = {task_id: {} for task_id in task_ids}
    if not task_ids:
        return result
    sources = []
    for start in range(0, len(task_ids), 500):
        sources.extend(connection.execute(
            sa.select(deps.c.task_id.label("dependant"), tasks.c.id, tasks.c.name)
            .join(deps, deps.c.requires_task_id == tasks.c.id)
            .where(deps.c.task_id.in_(task_ids[start : start + 500]), deps.c.kind == "metadata")
        ).all())
    if sources:
        values = output_metadata(connection, {row.id for row in sources})
        for row in sources:
            result[row.dependant][row.name] = values[row.id]
    return result


def latest_children_metadata(connection: Connection, parent_id: int, names: Iterable[str]) -> dict[str, dict]:
    """For a do-while: output metadata of the named children from the most recent pass."""
    names = list(names)
    if not names:
        return {}
    rows = connection.execute(
        sa.select(tasks.c.id, tasks.c.name).where(tasks.c.parent_id == parent_id, tasks.c.name.in_(names)).order_by(tasks.c.id)
    ).all()
    latest = {row.name: row.id for row in rows}  # later ids overwrite earlier passes
    values = output_metadata(connection, latest.values())
    return {name: values[task_id] for name, task_id in latest.items()}


def start_attempts(connection: Connection, attempt_ids: list[int], worker: dict, lease_seconds: float) -> list[dict]:
    """Claim queued attempts for ``worker`` (queued -> running with a lease) and return what it needs to run them.

    The UPDATE is conditional on the attempt still being queued, so an attempt someone else already
    started (a redelivered message, a cancelled task) is not taken twice.
    """
    if not attempt_ids:
        return []
    now = time.time()
    connection.execute(_START_ATTEMPTS, dict(
        ids=attempt_ids, now=now, lease=now + lease_seconds, b_worker_id=worker["id"], b_worker_name=worker["name"],
        b_host=worker["host"], b_pid=worker["pid"]))
    rows = connection.execute(_STARTED, dict(ids=attempt_ids, worker_id=worker["id"], now=now)).all()
    if rows:
        connection.execute(_TASKS_RUNNING, dict(ids=[row.task_id for row in rows], now=now))
    requested = requested_metadata_of(connection, [row.task_id for row in rows if row.has_requested])
    claimed = []
    for row in rows:
        item = row._asdict()
        del item["has_requested"]
        item["description"] = json.loads(item["description"])
        item["metadata"] = json.loads(item["metadata"])
        item["requested_metadata"] = requested.get(row.task_id, {})
        claimed.append(item)
    return claimed


# The claim's statements, built once (a claim runs them for every batch a worker takes).
_START_ATTEMPTS = (
    attempts.update()
    .where(attempts.c.id.in_(sa.bindparam("ids", expanding=True)), attempts.c.state == states.A_QUEUED)
    .values(state=states.A_RUNNING, started_at=sa.bindparam("now"), lease_expires_at=sa.bindparam("lease"),
            worker_id=sa.bindparam("b_worker_id"), worker_name=sa.bindparam("b_worker_name"), host=sa.bindparam("b_host"),
            pid=sa.bindparam("b_pid"))
)
_STARTED = (
    sa.select(
        attempts.c.id.label("attempt_id"), attempts.c.number, attempts.c.started_at, tasks.c.id.label("task_id"),
        tasks.c.task_type, tasks.c.job_id, tasks.c.job_name, tasks.c.name, tasks.c.working_directory, tasks.c.description,
        tasks.c.metadata, tasks.c.max_attempts, tasks.c.chain_path,
        sa.exists().where(task_dependencies.c.task_id == tasks.c.id, task_dependencies.c.kind == "metadata")
        .label("has_requested"),  # most tasks ask for no metadata: spares them a query
    )
    .join(tasks, tasks.c.id == attempts.c.task_id)
    .where(attempts.c.id.in_(sa.bindparam("ids", expanding=True)), attempts.c.worker_id == sa.bindparam("worker_id"),
           attempts.c.state == states.A_RUNNING, attempts.c.started_at == sa.bindparam("now"))
)
_TASKS_RUNNING = (
    tasks.update().where(tasks.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(state=states.RUNNING, updated_at=sa.bindparam("now"))
)
