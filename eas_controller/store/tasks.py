"""The tasks table's state changes, each a small named operation that says which states it moves from.

Everything runs inside the caller's transaction. Operations take task ids (or a selection condition for
the recovery scripts), move the rows that are in one of their source states and return a
:class:`~eas_controller.store.moves.Moved` naming the rows they left alone and why.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.engine import chunks
from eas_controller.database.schema import attempts, control_progress, tasks
from eas_controller.retries import RetryPolicy
from eas_controller.store import logs
from eas_controller.store.moves import Moved, guarded_update
from eas_controller.store.readiness import release_dependants

QUEUE_FROM = states.task_move(states.READY, states.QUEUED)
RUN_FROM = states.task_move(states.QUEUED, states.RUNNING)
DONE_FROM = states.task_move((states.RUNNING, states.READY), states.DONE)  # control tasks finish from ready
FAIL_FROM = states.task_move((states.READY, states.QUEUED, states.RUNNING), states.FAILED)
RETRY_FROM = states.task_move((states.RUNNING, states.QUEUED), states.READY)
EXPAND_FROM = states.task_move(states.READY, states.RUNNING)
EVALUATE_FROM = states.task_move(states.READY, states.READY)
RELEASE_FROM = states.task_move(states.RUNNING, states.READY)
UNQUEUE_FROM = states.task_move(states.QUEUED, (states.READY, states.HELD))
HOLD_FROM = states.task_move((states.READY, states.WAITING), states.HELD)
UNHOLD_FROM = states.task_move(states.HELD, (states.READY, states.WAITING))
CANCEL_FROM = states.task_move(states.TASK_UNFINISHED_STATES, states.CANCELLED)
RESCHEDULE_FROM = states.task_move(states.FAILED, states.READY)
BACKOFF_FROM = states.task_move(states.READY, states.READY)
ORPHAN_FROM = states.task_move((states.QUEUED, states.RUNNING), states.READY)


# -- promotion and claiming --------------------------------------------------------------------------------

def lock_ready(connection: Connection, now: float, limit: int) -> list:
    """Up to ``limit`` ready tasks whose retry wait is over, highest priority first, locked ``SKIP LOCKED``
    (two schedulers never take the same one)."""
    return connection.execute(
        sa.select(tasks.c.id, tasks.c.task_type, tasks.c.is_control, tasks.c.attempt_count, tasks.c.priority,
                  tasks.c.needs_evaluation, tasks.c.not_before, tasks.c.limit_key)
        .where(tasks.c.state == states.READY, sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now))
        .order_by(tasks.c.priority.desc(), tasks.c.id).limit(limit).with_for_update(skip_locked=True)
    ).all()


def mark_queued(connection: Connection, task_ids: list[int], now: float, current: dict[int, str] | None = None) -> Moved:
    """ready -> queued, counting the new attempt."""
    return guarded_update(connection, tasks, task_ids, QUEUE_FROM, dict(
        state=states.QUEUED, attempt_count=tasks.c.attempt_count + 1, updated_at=now), current=current)


def mark_running(connection: Connection, task_ids: list[int], now: float, current: dict[int, str] | None = None) -> Moved:
    """queued -> running: a worker claimed the task's attempt."""
    return guarded_update(connection, tasks, task_ids, RUN_FROM, dict(state=states.RUNNING, updated_at=now),
                          current=current)


def ready_plain_tasks(connection: Connection, task_ids: list[int]) -> list:
    """Of ``task_ids``, the plain tasks (not control flow, no late fields, no retry wait) that are ready: what
    a completion may queue at once instead of waiting for the scheduler's next pass. The caller's
    transaction already holds their rows (it just made them ready), so no scheduler can queue them too."""
    rows = []
    for chunk in chunks(task_ids):
        rows.extend(connection.execute(
            sa.select(tasks.c.id, tasks.c.task_type, tasks.c.attempt_count, tasks.c.priority, tasks.c.limit_key)
            .where(tasks.c.id.in_(chunk), tasks.c.state == states.READY, tasks.c.is_control.is_(False),
                   tasks.c.needs_evaluation.is_(False), tasks.c.not_before.is_(None))
            .order_by(tasks.c.priority.desc(), tasks.c.id)
        ).all())
    return rows


# -- finishing ---------------------------------------------------------------------------------------------

def finish_done(connection: Connection, task_ids: list[int], now: float, current: dict[int, str] | None = None) -> tuple[Moved, list[int]]:
    """running (or a control task's ready) -> done; the tasks waiting for them are released. Returns what
    moved and the plain dependants that may have become ready (see :func:`readiness.release_dependants`)."""
    moved = guarded_update(connection, tasks, task_ids, DONE_FROM, dict(state=states.DONE, error_text=None, updated_at=now),
                           current=current)
    return moved, release_dependants(connection, moved.moved, now) if moved.moved else []


def finish_failed(connection: Connection, task_ids: list[int], reason: str, now: float) -> Moved:
    """ready, queued or running -> failed, with the reason."""
    return guarded_update(connection, tasks, task_ids, FAIL_FROM, dict(state=states.FAILED, error_text=reason, updated_at=now))


def schedule_retry(connection: Connection, task_id: int, not_before: float, reason: str, now: float) -> Moved:
    """running or queued -> ready, not promoted before ``not_before``."""
    return guarded_update(connection, tasks, [task_id], RETRY_FROM, dict(
        state=states.READY, not_before=not_before, error_text=reason, updated_at=now))


def retry_or_fail(connection: Connection, task_id: int, reason: str, now: float, policy: RetryPolicy,
                  attempt_id: int | None = None, lost: bool = False) -> bool:
    """Carry out the policy's decision for a task whose attempt failed (or, ``lost``, whose worker was lost):
    a retry after the backoff while it has attempts of that kind left, else ``failed`` with the reason and
    the count. With ``attempt_id`` the decision is also written to that attempt's log. Returns whether it
    will be retried."""
    max_attempts = connection.execute(sa.select(tasks.c.max_attempts).where(tasks.c.id == task_id)).scalar()
    ended = dict(connection.execute(sa.select(attempts.c.state, sa.func.count()).where(
        attempts.c.task_id == task_id, attempts.c.state.in_([states.A_FAILED, states.A_STALLED]))
        .group_by(attempts.c.state)).all())
    decision = policy.decide(ended.get(states.A_FAILED, 0), ended.get(states.A_STALLED, 0), max_attempts, lost)
    kind = "lost attempts" if lost else "attempts"
    if decision.retry:
        schedule_retry(connection, task_id, now + decision.delay_s, reason, now)
        if attempt_id is not None:
            logs.write_note(connection, attempt_id, task_id, "INFO", "the task will be retried in %.3g s (%d of %d "
                            "%s used)" % (decision.delay_s, decision.used, decision.limit, kind))
        return True
    if lost:
        final = "the worker running it was lost %d times (max_lost_attempts %d); the last time: %s" % (
            decision.used, decision.limit, reason)
    else:
        final = "%s (attempt %d of %d)" % (reason, decision.used, decision.limit)
    finish_failed(connection, [task_id], final, now)
    if attempt_id is not None:
        logs.write_note(connection, attempt_id, task_id, "ERROR", "no %s left (%d of %d used): the task failed"
                        % (kind, decision.used, decision.limit))
    return False


# -- control tasks -----------------------------------------------------------------------------------------

def control_task(connection: Connection, task_id: int) -> dict:
    """The whole row of a control task, its JSON fields decoded."""
    row = connection.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()._asdict()
    row["description"] = json.loads(row["description"])
    row["metadata"] = json.loads(row["metadata"])
    return row


def start_expansion(connection: Connection, task_id: int, expansions: int, children: int, now: float) -> Moved:
    """ready -> running: a control task's children (one more pass of them) now exist; it waits for them."""
    return guarded_update(connection, tasks, [task_id], EXPAND_FROM, dict(
        state=states.RUNNING, expansions=expansions, unmet_dependencies=children, updated_at=now))


def count_expansion(connection: Connection, task_id: int) -> Moved:
    """Record that a ready control task was expanded into nothing (an empty branch): it then finishes."""
    return guarded_update(connection, tasks, [task_id], EVALUATE_FROM, dict(expansions=1))


def store_evaluated(connection: Connection, task_id: int, description: dict) -> Moved:
    """A ready task's fields that waited for requested metadata, now evaluated."""
    return guarded_update(connection, tasks, [task_id], EVALUATE_FROM, dict(
        description=json.dumps(description), needs_evaluation=False))


def late_fields(connection: Connection, task_id: int):
    return connection.execute(sa.select(tasks.c.description, tasks.c.metadata, tasks.c.chain_path, tasks.c.job_name)
                              .where(tasks.c.id == task_id)).one()


def ancestry(connection: Connection, task_id: int) -> list[int]:
    """The task and its enclosing control tasks, innermost first."""
    chain, current = [], task_id
    while current is not None:
        chain.append(current)
        current = connection.execute(sa.select(tasks.c.parent_id).where(tasks.c.id == current)).scalar_one()
    return chain


# -- giving work back ----------------------------------------------------------------------------------------

def release_running(connection: Connection, task_ids: list[int], now: float) -> Moved:
    """running -> ready, the attempt not counted (a worker gave it back: shutdown, lost claim reply)."""
    return guarded_update(connection, tasks, task_ids, RELEASE_FROM, dict(
        state=states.READY, attempt_count=tasks.c.attempt_count - 1, not_before=None, updated_at=now))


def unqueue(connection: Connection, task_ids: list[int], target: str, now: float) -> Moved:
    """queued -> ready or held: the queued attempt was taken out of the queue and does not count."""
    return guarded_update(connection, tasks, task_ids, UNQUEUE_FROM, dict(
        state=target, attempt_count=sa.case((tasks.c.attempt_count > 0, tasks.c.attempt_count - 1), else_=0),
        not_before=None, updated_at=now))


def selected(connection: Connection, condition, in_states, extra=None) -> dict[int, str]:
    """{id: state} of the tasks matching a recovery selection in ``in_states``, locked."""
    query = sa.select(tasks.c.id, tasks.c.state).where(tasks.c.state.in_(in_states), condition)
    if extra is not None:
        query = query.where(extra)
    return {row.id: row.state for row in connection.execute(query.order_by(tasks.c.id).with_for_update())}


def hold(connection: Connection, condition, now: float) -> Moved:
    """ready or waiting -> held (``empty_queue.py --hold``)."""
    current = selected(connection, condition, HOLD_FROM)
    return guarded_update(connection, tasks, current, HOLD_FROM, dict(state=states.HELD, updated_at=now), current=current)


def unhold(connection: Connection, condition, now: float) -> Moved:
    """held -> ready, or waiting while some of its dependencies have still to finish."""
    current = selected(connection, condition, UNHOLD_FROM)
    return guarded_update(connection, tasks, current, UNHOLD_FROM, dict(
        state=sa.case((tasks.c.unmet_dependencies > 0, states.WAITING), else_=states.READY), updated_at=now),
        current=current)


def cancel(connection: Connection, task_ids: list[int], reason: str, now: float) -> Moved:
    """Any unfinished state -> cancelled."""
    return guarded_update(connection, tasks, task_ids, CANCEL_FROM, dict(state=states.CANCELLED, error_text=reason,
                                                                         updated_at=now))


def reschedule_failed(connection: Connection, condition, now: float) -> Moved:
    """failed -> ready (one more attempt, whatever ``max_attempts`` says); control tasks that failed after
    expanding are left alone (expanding them again would duplicate their children)."""
    current = selected(connection, condition, RESCHEDULE_FROM,
                       sa.or_(tasks.c.is_control.is_(False), tasks.c.expansions == 0))
    return guarded_update(connection, tasks, current, RESCHEDULE_FROM, dict(
        state=states.READY, not_before=None, error_text=None, updated_at=now), current=current)


def clear_backoff(connection: Connection, condition, now: float) -> Moved:
    """Ready tasks waiting out a retry backoff may start now."""
    current = selected(connection, condition, BACKOFF_FROM, tasks.c.not_before > now)
    return guarded_update(connection, tasks, current, BACKOFF_FROM, dict(not_before=None, updated_at=now), current=current)


def ready_orphans(connection: Connection, task_ids: list[int], now: float) -> Moved:
    """queued or running -> ready, for tasks left without a live attempt (a crash at an unlucky moment)."""
    return guarded_update(connection, tasks, task_ids, ORPHAN_FROM, dict(state=states.READY, not_before=None,
                                                                         updated_at=now))


# -- reads the roles need ----------------------------------------------------------------------------------

def work_may_come(connection: Connection, task_types: list[str]) -> bool:
    """Could anything still reach a worker of these types: ready or queued tasks of them, running tasks (they
    may release dependants), a control task to expand, or a loop's deliveries not yet counted?"""
    found = connection.execute(sa.select(tasks.c.id).where(sa.or_(
        sa.and_(tasks.c.state.in_([states.READY, states.QUEUED]), tasks.c.task_type.in_(task_types)),
        sa.and_(tasks.c.state == states.RUNNING, tasks.c.is_control.is_(False)),
        sa.and_(tasks.c.state == states.READY, tasks.c.is_control.is_(True)),
    )).limit(1)).first()
    return found is not None or connection.execute(sa.select(control_progress.c.id).limit(1)).first() is not None


def unfinished_counts(connection: Connection) -> dict[str, int]:
    """Worker tasks per unfinished state (the scheduler's status line)."""
    rows = connection.execute(sa.select(tasks.c.state, sa.func.count()).where(
        tasks.c.state.in_(states.TASK_UNFINISHED_STATES), tasks.c.is_control.is_(False)).group_by(tasks.c.state))
    return {state: count for state, count in rows}
