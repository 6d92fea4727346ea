"""Incremental readiness: each task counts its unmet dependencies down as the tasks it waits for finish.

Finishing a task delivers it to the tasks waiting for it in the same transaction; a plain task whose last
dependency was delivered becomes ``ready``. Control-flow tasks (every chain or loop waits for each of its
children) are not counted down here: all their children's completions would queue up on that one row's
lock. Their deliveries are appended to ``eas_control_progress`` and the scheduler counts them down in bulk
(:func:`count_control_progress`); it has to act on a control task that becomes ready anyway.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.engine import chunks
from eas_controller.database.schema import control_progress, task_dependencies, tasks

#: A plain task waiting for dependencies, or a control task waiting for its children, becomes ready.
BECOME_READY_FROM = states.task_move((states.WAITING, states.RUNNING), states.READY)


def release_dependants(connection: Connection, task_ids: list[int], now: float | None = None) -> list[int]:
    """Deliver the finished tasks ``task_ids`` to the tasks that wait for them. Returns the ids of the plain
    (not control-flow) dependants: the ones that may have become ready to queue.

    Three statements however many tasks finished together: find the dependants with how many of their
    dependencies are among ``task_ids``, mark the dependency rows satisfied, count each plain dependant
    down by that many (one UPDATE per distinct amount, usually one).
    """
    now = now or time.time()
    delivered: dict[int, int] = {}  # dependant -> how many of its dependencies finished now
    plain: set[int] = set()
    for chunk in chunks(task_ids):
        for dependant, is_control, count in connection.execute(_DELIVERED, {"ids": chunk}):
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
    become ready if they are waiting (a plain task) or running (a control task whose children are all done).
    A held task keeps counting down and stays held."""
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
    for chunk in chunks([row.id for row in rows]):
        connection.execute(control_progress.delete().where(control_progress.c.id.in_(chunk)))
    return len(rows)


def add_child_dependencies(connection: Connection, task_id: int, child_ids: list[int]) -> None:
    """A control task waits for each of its (new) direct children."""
    connection.execute(task_dependencies.insert(), [
        dict(task_id=task_id, requires_task_id=child_id, kind="child", satisfied=False) for child_id in child_ids])


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
            sa.or_(tasks.c.state == BECOME_READY_FROM[0],
                   sa.and_(tasks.c.state == BECOME_READY_FROM[1], tasks.c.is_control)),
        ), states.READY), else_=tasks.c.state)),
        (tasks.c.unmet_dependencies, tasks.c.unmet_dependencies - sa.bindparam("amount")),
        (tasks.c.updated_at, sa.bindparam("now")),
    )
)
