"""The scheduler: turns ready tasks into queued attempts, expands control-flow tasks, and retries stalled work.

One pass = a few short transactions. Promotion selects ready tasks ``FOR UPDATE SKIP LOCKED`` (SQLite:
``BEGIN IMMEDIATE``), so two schedulers running at once never queue the same task twice; its cost follows
the number of ready tasks, not the size of the table. Control-flow tasks (loops, conditionals) are
expanded here and never reach a worker. Attempts whose lease expired become ``stalled`` and their tasks
are retried while ``max_attempts`` allows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eas_controller import lifecycle, states
from eas_controller.chains import DO_WHILE, ChainError, evaluate_late_fields, expand_control_task
from eas_controller.database.engine import is_retryable, run_transaction
from eas_controller.database.schema import attempts, log_lines, task_dependencies, tasks
from eas_controller.queues.base import Queue
from eas_controller.registry import load_registry
from eas_controller.submission import write_plan

log = logging.getLogger("eas.scheduler")


@dataclasses.dataclass
class PassResult:
    promoted: int = 0
    expanded: int = 0
    finished_control: int = 0
    failed: int = 0
    stalled: int = 0
    retried: int = 0
    republished: int = 0  # queued attempts whose message the broker had not confirmed, published again
    counted: int = 0  # deliveries to control tasks counted down (see lifecycle.count_control_progress)

    @property
    def did_something(self) -> bool:
        return any(dataclasses.astuple(self))


class Scheduler:
    """Owns nothing but a database engine, a queue and a few settings; safe to run several at once."""

    def __init__(self, engine: Engine, queue: Queue, default_max_attempts: int = 1, batch_size: int = 1000,
                 retry_backoff_s: float = 5.0):
        self.engine = engine
        self.queue = queue
        self.default_max_attempts = default_max_attempts
        self.batch_size = batch_size
        self.retry_backoff_s = retry_backoff_s
        self._registry = None
        self._counts: tuple[float, float, dict] | None = None  # (when, cost in s, task counts) for status lines

    def registry(self, connection: Connection):
        if self._registry is None:
            self._registry = load_registry(connection)
        return self._registry

    # -- one pass ------------------------------------------------------------------------------------
    def run_pass(self) -> PassResult:
        result = PassResult()
        self.recover_stalled(result)
        while True:
            promoted_before = result.promoted + result.expanded + result.finished_control + result.failed
            run_transaction(self.engine, lambda connection: self.promote_batch(connection, result))
            self.queue.flush()
            done_now = result.promoted + result.expanded + result.finished_control + result.failed
            if done_now - promoted_before < self.batch_size:
                break
        result.republished = self.queue.repair()
        return result

    def promote_batch(self, connection: Connection, result: PassResult) -> None:
        """Lock a batch of ready tasks and queue, expand or finish each one."""
        self.queue.discard()  # entries from an earlier try of this transaction that rolled back
        result.counted += lifecycle.count_control_progress(connection, self.batch_size)
        now = time.time()
        rows = connection.execute(
            sa.select(
                tasks.c.id, tasks.c.task_type, tasks.c.is_control, tasks.c.attempt_count, tasks.c.priority,
                tasks.c.needs_evaluation, tasks.c.not_before,
            )
            .where(tasks.c.state == states.READY, sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now))
            .order_by(tasks.c.priority.desc(), tasks.c.id)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        to_queue = []
        for row in rows:
            if row.is_control:
                self.advance_control_task(connection, row.id, result)
            elif row.needs_evaluation and not self.evaluate_late(connection, row.id, result):
                continue
            else:
                to_queue.append(row)
        entries = lifecycle.create_attempts(connection, to_queue, self.queue.name, now)
        self.queue.enqueue(connection, entries)
        result.promoted += len(entries)

    def evaluate_late(self, connection: Connection, task_id: int, result: PassResult) -> bool:
        """Evaluate fields that waited for requested metadata; a failure fails the task with the reason."""
        row = connection.execute(
            sa.select(tasks.c.description, tasks.c.metadata, tasks.c.chain_path, tasks.c.job_name).where(tasks.c.id == task_id)
        ).one()
        where = "job %s (task %d): %s" % (row.job_name, task_id, row.chain_path)
        try:
            description = evaluate_late_fields(
                json.loads(row.description), json.loads(row.metadata), requested_metadata_in_scope(connection, task_id),
                where,
            )
        except ChainError as error:
            self.fail_control(connection, task_id, result, str(error))
            return False
        connection.execute(
            tasks.update().where(tasks.c.id == task_id).values(description=json.dumps(description), needs_evaluation=False)
        )
        return True

    def advance_control_task(self, connection: Connection, task_id: int, result: PassResult) -> None:
        """Expand a control task (first or next pass) or, when its children are all done, finish it.

        Runs in a savepoint: whatever goes wrong (a bad expression, an input nobody makes, a bug) fails this
        task with the reason and leaves the rest of the batch, and the scheduler, going.
        """
        savepoint = connection.begin_nested()
        try:
            self._advance_control_task(connection, task_id, result)
        except Exception as error:  # noqa: BLE001 - one task's problem must not stop the scheduler
            if _is_database_error(error):
                raise  # a deadlock or lost connection: the whole transaction is retried
            savepoint.rollback()
            if not isinstance(error, ChainError):
                log.exception("expanding control task %d failed", task_id)
                error = "cannot expand: %s: %s" % (error.__class__.__name__, error)
            self.fail_control(connection, task_id, result, str(error))
        else:
            savepoint.commit()

    def _advance_control_task(self, connection: Connection, task_id: int, result: PassResult) -> None:
        row = connection.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()._asdict()
        if row["expansions"] >= 1 and row["task_type"] != DO_WHILE:
            lifecycle.finish_task(connection, task_id, states.DONE)  # its children are all done
            result.finished_control += 1
            return
        row["description"] = json.loads(row["description"])
        row["metadata"] = json.loads(row["metadata"])
        requested = requested_metadata_in_scope(connection, task_id)
        child_requested = None
        if row["task_type"] == DO_WHILE and row["expansions"] >= 1:
            names = row["description"].get("requires_metadata_from_child", []) or []
            if isinstance(names, str):
                names = [names]
            child_requested = lifecycle.latest_children_metadata(connection, task_id, names)
            missing = [name for name in names if name not in child_requested]
            if missing:
                raise ChainError("job %s (task %d): %s: requires_metadata_from_child names %s, which the loop body "
                                 "does not contain" % (row["job_name"], task_id, row["chain_path"], missing))
        plan, finished = expand_control_task(row, self.registry(connection).keys(), requested, child_requested)
        ids = write_plan(connection, plan, row["job_id"], self.max_attempts_by_type(connection))
        children = [node for node in plan.nodes if node.parent is None]
        if children:
            # children (and their subtrees) now exist: the control task waits for its direct children
            connection.execute(
                tasks.update()
                .where(tasks.c.id == task_id)
                .values(
                    state=states.RUNNING, expansions=row["expansions"] + 1, unmet_dependencies=len(children),
                    updated_at=time.time(),
                )
            )
            connection.execute(
                task_dependencies.insert(),
                [dict(task_id=task_id, requires_task_id=ids[child.index], kind="child", satisfied=False) for child in children],
            )
            result.expanded += 1
        else:  # nothing (more) to run: an empty branch, or a do-while whose repeat_criterion is false
            if row["task_type"] != DO_WHILE:  # a do-while's count stays the number of passes it ran
                connection.execute(tasks.update().where(tasks.c.id == task_id).values(expansions=1))
            lifecycle.finish_task(connection, task_id, states.DONE)
            result.finished_control += 1

    def fail_control(self, connection: Connection, task_id: int, result: PassResult, message: str) -> None:
        lifecycle.finish_task(connection, task_id, states.FAILED, message)
        result.failed += 1
        log.warning("control task %d failed: %s", task_id, message)

    def max_attempts_by_type(self, connection: Connection) -> dict:
        return {name: task_type.max_attempts for name, task_type in self.registry(connection).items()}

    # -- leases --------------------------------------------------------------------------------------
    def recover_stalled(self, result: PassResult) -> None:
        """Running attempts whose lease expired become stalled (the reason kept); their tasks retry or fail.

        The row lock taken here is the same one a worker's completion takes, so a worker that comes back
        either records its result before this (the attempt is no longer running) or finds it stalled and
        discards its result.
        """

        def body(connection: Connection) -> None:
            now = time.time()
            rows = connection.execute(
                sa.select(attempts.c.id, attempts.c.task_id, attempts.c.number, attempts.c.worker_name, attempts.c.host,
                          attempts.c.pid, attempts.c.lease_expires_at)
                .where(attempts.c.state == states.A_RUNNING, attempts.c.lease_expires_at < now)
                .order_by(attempts.c.lease_expires_at)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                reason = "lease expired at %s: worker %s (host %s, pid %s) stopped renewing it" % (
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.lease_expires_at)), row.worker_name,
                    row.host, row.pid)
                connection.execute(
                    attempts.update().where(attempts.c.id == row.id, attempts.c.state == states.A_RUNNING)
                    .values(state=states.A_STALLED, ended_at=now, error_text=reason)
                )
                write_note(connection, row.id, row.task_id, "WARNING", "attempt %d stalled: %s" % (row.number, reason))
                result.stalled += 1
                log.warning("attempt %d (task %d) stalled: %s", row.id, row.task_id, reason)
                if self.retry_or_fail(connection, row.task_id, reason, now, attempt_id=row.id):
                    result.retried += 1
                else:
                    result.failed += 1

        run_transaction(self.engine, body, on_retry=_log_database_retry)

    def status_line(self, result: PassResult) -> str:
        """Counting the tasks reads every unfinished one (~0.1 s per 100,000 waiting on MariaDB), so the counts
        are refreshed once 20 times their cost has passed: with a large backlog printing stays a small share
        of the daemon's time (the counts are then up to a few seconds old); with a small one, every pass."""
        now = time.time()
        if self._counts is None or now - self._counts[0] >= 20 * self._counts[1]:
            from eas_controller.database.engine import read_transaction

            started = time.perf_counter()
            with read_transaction(self.engine) as connection:
                counts = _status_counts(connection)
            self._counts = (now, time.perf_counter() - started, counts)
        return status_line(self.engine, result, self._counts[2])

    def retry_or_fail(self, connection: Connection, task_id: int, reason: str, now: float,
                      attempt_id: int | None = None) -> bool:
        """Give the task another attempt (with exponential backoff) if it has attempts left; else fail it."""
        return retry_or_fail(connection, task_id, reason, now, self.default_max_attempts, self.retry_backoff_s,
                             attempt_id=attempt_id)


def requested_metadata_in_scope(connection: Connection, task_id: int) -> dict[str, dict]:
    """What the expressions of a task may read as ``requested_metadata``: the output metadata of the tasks named
    in its own ``requires_metadata_from`` and in those of its enclosing control tasks (the nearest wins)."""
    chain = []
    current = task_id
    while current is not None:
        chain.append(current)
        current = connection.execute(sa.select(tasks.c.parent_id).where(tasks.c.id == current)).scalar_one()
    merged: dict[str, dict] = {}
    for ancestor in reversed(chain):
        merged.update(lifecycle.requested_metadata(connection, ancestor))
    return merged


def _is_database_error(error: BaseException) -> bool:
    """A lost connection or a deadlock: the whole transaction is retried rather than the task failed."""
    return is_retryable(error)


#: The longest wait between two attempts of a task, however many failed before.
MAX_RETRY_BACKOFF_S = 3600.0


def retry_or_fail(connection: Connection, task_id: int, reason: str, now: float, default_max_attempts: int,
                  backoff_s: float, attempt_id: int | None = None) -> bool:
    """Shared by the scheduler (stalled attempts) and workers (failed attempts).

    While the task has attempts left (its type's ``max_attempts``, else the setting ``max_attempts``) it
    becomes ready again, not before ``backoff_s * 2**(n-1)`` seconds after its n-th attempt ended; else
    it fails with the reason and the count. The attempts stay as its history. With ``attempt_id`` the
    decision is also written to that attempt's log.
    """
    task = connection.execute(
        sa.select(tasks.c.attempt_count, tasks.c.max_attempts).where(tasks.c.id == task_id)
    ).one()
    limit = task.max_attempts or default_max_attempts
    if task.attempt_count < limit:
        delay = min(MAX_RETRY_BACKOFF_S, backoff_s * (2 ** max(0, task.attempt_count - 1)))
        connection.execute(
            tasks.update().where(tasks.c.id == task_id)
            .values(state=states.READY, not_before=now + delay, error_text=reason, updated_at=now)
        )
        if attempt_id is not None:
            write_note(connection, attempt_id, task_id, "INFO", "the task will be retried in %.3g s (%d of %d "
                       "attempts used)" % (delay, task.attempt_count, limit))
        return True
    lifecycle.finish_task(
        connection, task_id, states.FAILED, "%s (attempt %d of %d)" % (reason, task.attempt_count, limit)
    )
    if attempt_id is not None:
        write_note(connection, attempt_id, task_id, "ERROR", "no attempts left (%d of %d used): the task failed"
                   % (task.attempt_count, limit))
    return False


def write_note(connection: Connection, attempt_id: int, task_id: int, severity: str, message: str) -> None:
    """A line in an attempt's log written by the controller itself (stream ``system``)."""
    connection.execute(log_lines.insert().values(attempt_id=attempt_id, task_id=task_id, created_at=time.time(),
                                                 severity=severity, stream="system", message=message[:60000]))


def _log_database_retry(error: BaseException, delay: float) -> None:
    log.warning("database unavailable (%s); retrying in %.1f s", str(error).splitlines()[0][:200], delay)


def _status_counts(connection: Connection) -> dict[str, int]:
    rows = connection.execute(sa.select(tasks.c.state, sa.func.count()).where(
        tasks.c.state.in_([states.WAITING, states.READY, states.QUEUED, states.RUNNING, states.HELD]),
        tasks.c.is_control.is_(False)).group_by(tasks.c.state))
    return {state: count for state, count in rows}


def status_line(engine: Engine, result: PassResult, counts: dict[str, int] | None = None) -> str:
    """One line for a screen session: what this pass did and where the work stands."""
    from eas_controller.database.engine import read_transaction

    from eas_controller.worker.resources import describe_unmet, unmet_needs

    with read_transaction(engine) as connection:
        counts = _status_counts(connection) if counts is None else counts
        unmet = describe_unmet(unmet_needs(connection))
    parts = ["promoted %d" % result.promoted]
    for label, value in (("expanded", result.expanded), ("loops/chains finished", result.finished_control),
                         ("failed", result.failed), ("stalled", result.stalled), ("retried", result.retried),
                         ("re-published", result.republished)):
        if value:
            parts.append("%s %d" % (label, value))
    parts.append("now: %d waiting, %d ready, %d queued, %d running" % tuple(
        counts.get(state, 0) for state in (states.WAITING, states.READY, states.QUEUED, states.RUNNING))
        + (", %d held" % counts[states.HELD] if counts.get(states.HELD) else ""))
    if unmet:
        parts.append(unmet)
    return ", ".join(parts)
