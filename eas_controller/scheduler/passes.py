"""One scheduling pass: turn ready tasks into queued attempts, expand control-flow tasks, recover stalled work.

A pass is a few short transactions. Promotion locks ready tasks ``FOR UPDATE SKIP LOCKED`` (SQLite:
``BEGIN IMMEDIATE``), so two schedulers running at once never queue the same task twice; its cost follows
the number of ready tasks, not the size of the table. Control-flow tasks (loops, conditionals) are
expanded here and never reach a worker. Attempts whose lease expired become ``stalled`` and their tasks
are retried or failed by the retry policy. Every write goes through :mod:`eas_controller.store`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from sqlalchemy.engine import Connection, Engine

from eas_controller.chains import DO_WHILE, ChainError, evaluate_late_fields, expand_control_task
from eas_controller.database.engine import is_connection_error, is_retryable, run_transaction
from eas_controller.queues.base import Queue
from eas_controller.registry import load_registry
from eas_controller.retries import RetryPolicy
from eas_controller.store import attempts as attempt_store
from eas_controller.store import logs, plans, readiness
from eas_controller.store import metadata as metadata_store
from eas_controller.store import tasks as task_store

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
    counted: int = 0  # deliveries to control tasks counted down (see store.readiness.count_control_progress)

    @property
    def did_something(self) -> bool:
        return any(dataclasses.astuple(self))


#: A pass's first batch: small, so that workers have something to start on within milliseconds of a large
#: submission (a batch of 1,000 takes ~0.2 s to write); each next batch is four times larger, up to the
#: batch size.
FIRST_BATCH = 100


class Scheduler:
    """Owns nothing but a database engine, a queue and a retry policy; safe to run several at once."""

    def __init__(self, engine: Engine, queue: Queue, default_max_attempts: int = 1, batch_size: int = 1000,
                 retry_backoff_s: float = 5.0, max_lost_attempts: int = 3, lease_seconds: float = 0.0):
        """``lease_seconds``: how long the database must have been reachable before expired leases are
        stalled (the daemon passes the lease length: after an outage live workers renew first)."""
        self.engine = engine
        self.queue = queue
        self.policy = RetryPolicy(default_max_attempts, retry_backoff_s, max_lost_attempts)
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.reachable_since: float | None = None  # since when every transaction of this scheduler went through
        self._registry = None

    def registry(self, connection: Connection):
        if self._registry is None:
            self._registry = load_registry(connection)
        return self._registry

    # -- one pass ------------------------------------------------------------------------------------
    def run_pass(self) -> PassResult:
        result = PassResult()
        if self.leases_can_be_judged():
            self.recover_stalled(result)
        limit = min(self.batch_size, FIRST_BATCH)
        while True:
            before = result.promoted + result.expanded + result.finished_control + result.failed
            self.transaction(lambda connection: self.promote_batch(connection, result, limit))
            self.queue.flush()
            if result.promoted + result.expanded + result.finished_control + result.failed - before < limit:
                break
            limit = min(self.batch_size, limit * 4)
        result.republished = self.queue.repair()
        return result

    def transaction(self, body):
        """``run_transaction``, noting when the database was out of reach (see :meth:`leases_can_be_judged`)."""
        try:
            value = run_transaction(self.engine, body, on_retry=self._database_retry)
        except Exception as error:
            if is_connection_error(error):
                self.reachable_since = None
            raise
        if self.reachable_since is None:
            self.reachable_since = time.time()
        return value

    def _database_retry(self, error: BaseException, delay: float) -> None:
        if is_connection_error(error):
            self.reachable_since = None  # an outage, not a passing deadlock: leases wait for workers to renew
        _log_database_retry(error, delay)

    def leases_can_be_judged(self) -> bool:
        """An expired lease means a lost worker only on time the database was reachable: after this scheduler
        starts or regains the database, it waits a full lease period, so that live workers renew first."""
        if not self.lease_seconds:
            return True
        if self.reachable_since is None:
            self.transaction(lambda connection: None)
        return time.time() - self.reachable_since >= self.lease_seconds

    def promote_batch(self, connection: Connection, result: PassResult, limit: int) -> None:
        """Lock a batch of (up to ``limit``) ready tasks and queue, expand or finish each one."""
        self.queue.discard()  # entries from an earlier try of this transaction that rolled back
        result.counted += readiness.count_control_progress(connection, self.batch_size)
        now = time.time()
        to_queue = []
        for row in task_store.lock_ready(connection, now, limit):
            if row.is_control:
                self.advance_control_task(connection, row.id, result)
            elif row.needs_evaluation and not self.evaluate_late(connection, row.id, result):
                continue
            else:
                to_queue.append(row)
        current = {row.id: task_store.QUEUE_FROM[0] for row in to_queue}  # locked above, still ready
        entries = attempt_store.create(connection, to_queue, self.queue.name, now, current)
        self.queue.enqueue(connection, entries)
        result.promoted += len(entries)

    def evaluate_late(self, connection: Connection, task_id: int, result: PassResult) -> bool:
        """Evaluate fields that waited for requested metadata; a failure fails the task with the reason."""
        row = task_store.late_fields(connection, task_id)
        where = "job %s (task %d): %s" % (row.job_name, task_id, row.chain_path)
        try:
            description = evaluate_late_fields(json.loads(row.description), json.loads(row.metadata),
                                               requested_metadata_in_scope(connection, task_id), where)
        except ChainError as error:
            self.fail_control(connection, task_id, result, str(error))
            return False
        task_store.store_evaluated(connection, task_id, description)
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
            if is_retryable(error):
                raise  # a deadlock or lost connection: the whole transaction is retried
            savepoint.rollback()
            if not isinstance(error, ChainError):
                log.exception("expanding control task %d failed", task_id)
                error = "cannot expand: %s: %s" % (error.__class__.__name__, error)
            self.fail_control(connection, task_id, result, str(error))
        else:
            savepoint.commit()

    def _advance_control_task(self, connection: Connection, task_id: int, result: PassResult) -> None:
        row = task_store.control_task(connection, task_id)
        child_requested = None
        if row["task_type"] == DO_WHILE and row["expansions"] >= 1:
            names = row["description"].get("requires_metadata_from_child", []) or []
            names = [names] if isinstance(names, str) else names
            child_requested = metadata_store.latest_children(connection, task_id, names)
            missing = [name for name in names if name not in child_requested]
            if missing:
                raise ChainError("job %s (task %d): %s: requires_metadata_from_child names %s, which the loop body "
                                 "does not contain" % (row["job_name"], task_id, row["chain_path"], missing))
        requested = requested_metadata_in_scope(connection, task_id) if row["expansions"] == 0 or child_requested is not None else {}
        plan, finished = expand_control_task(row, self.registry(connection), requested, child_requested)
        now = time.time()
        children = [node for node in plan.nodes if node.parent is None]
        if children:
            ids = plans.write_plan(connection, plan, row["job_id"], self.max_attempts_by_type(connection))
            # children (and their subtrees) now exist: the control task waits for its direct children
            task_store.start_expansion(connection, task_id, row["expansions"] + 1, len(children), now)
            readiness.add_child_dependencies(connection, task_id, [ids[child.index] for child in children])
            result.expanded += 1
            return
        # nothing (more) to run: its children are all done, an empty branch, or a do-while whose
        # repeat_criterion is false
        if finished and row["expansions"] == 0 and row["task_type"] != DO_WHILE:
            task_store.count_expansion(connection, task_id)  # a do-while's count stays the passes it ran
        task_store.finish_done(connection, [task_id], now)
        result.finished_control += 1

    def fail_control(self, connection: Connection, task_id: int, result: PassResult, message: str) -> None:
        task_store.finish_failed(connection, [task_id], message, time.time())
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
            for row in attempt_store.expired(connection, self.batch_size):
                reason = "lease expired at %s: worker %s (host %s, pid %s) stopped renewing it" % (
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.lease_expires_at)), row.worker_name,
                    row.host, row.pid)
                attempt_store.stall(connection, row.id, reason, now, current={row.id: row.state})
                logs.write_note(connection, row.id, row.task_id, "WARNING", "attempt %d stalled: %s" % (row.number, reason))
                result.stalled += 1
                log.warning("attempt %d (task %d) stalled: %s", row.id, row.task_id, reason)
                if task_store.retry_or_fail(connection, row.task_id, reason, now, self.policy, attempt_id=row.id, lost=True):
                    result.retried += 1
                else:
                    result.failed += 1

        self.transaction(body)


def requested_metadata_in_scope(connection: Connection, task_id: int) -> dict[str, dict]:
    """What the expressions of a task may read as ``requested_metadata``: the output metadata of the tasks named
    in its own ``requires_metadata_from`` and in those of its enclosing control tasks (the nearest wins)."""
    merged: dict[str, dict] = {}
    for ancestor in reversed(task_store.ancestry(connection, task_id)):
        merged.update(metadata_store.requested(connection, ancestor))
    return merged


def _log_database_retry(error: BaseException, delay: float) -> None:
    log.warning("database unavailable (%s); retrying in %.1f s", str(error).splitlines()[0][:200], delay)
