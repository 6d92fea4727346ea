"""Recovery operations behind the scripts in ``queue_management/``: each is idempotent and says what it changed.

Every operation takes a :class:`Selection` (job name, job id, task types) and a ``dry_run`` flag. A dry
run executes the very same statements inside a transaction that is rolled back, so what it reports is
exactly what a real run would do at that moment. Changes that concern the broker (dropping or publishing
messages) happen after the database transaction commits, as everywhere else.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eas_controller import states
from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.database.schema import attempts, jobs, tasks
from eas_controller.queues.base import Queue
from eas_controller.registry import type_names
from eas_controller.store import attempts as attempt_store
from eas_controller.store import tasks as task_store


@dataclasses.dataclass
class Selection:
    """Which tasks an operation touches; empty means every task."""

    job_name: str | None = None
    job_id: int | None = None
    task_types: list[str] | None = None

    @property
    def is_everything(self) -> bool:
        return self.job_name is None and self.job_id is None and not self.task_types

    def condition(self):
        """A SQL condition over ``tasks``. A job name matches the submitted job's name and the tasks that carry
        that ``job_name`` (a chain can override it for a subtree)."""
        parts = []
        if self.job_name is not None:
            parts.append(sa.or_(tasks.c.job_name == self.job_name,
                                tasks.c.job_id.in_(sa.select(jobs.c.id).where(jobs.c.name == self.job_name))))
        if self.job_id is not None:
            parts.append(tasks.c.job_id == self.job_id)
        if self.task_types:
            parts.append(tasks.c.task_type.in_(self.task_types))
        return sa.and_(*parts) if parts else sa.true()

    def describe(self) -> str:
        parts = []
        if self.job_name is not None:
            parts.append("job %r" % self.job_name)
        if self.job_id is not None:
            parts.append("job id %d" % self.job_id)
        if self.task_types:
            parts.append("task type%s %s" % ("s" if len(self.task_types) > 1 else "", ", ".join(self.task_types)))
        return " and ".join(parts) if parts else "every task"


class _Rollback(Exception):
    pass


def apply(engine: Engine, queue: Queue | None, body: Callable[[Connection], dict], dry_run: bool) -> dict:
    """Run ``body`` in one write transaction; roll it back for a dry run; flush the queue after a commit."""
    report: dict = {}

    def wrapped(connection: Connection) -> dict:
        if queue is not None:
            queue.discard()
        report.clear()
        report.update(body(connection))
        if dry_run:
            raise _Rollback()
        return report

    try:
        run_transaction(engine, wrapped)
    except _Rollback:
        if queue is not None:
            queue.discard()
        return report
    if queue is not None:
        queue.flush()
    return report


def check_task_types(engine: Engine, names: list[str] | None) -> None:
    """Unknown task types in a filter are a clear error, not a silent no-op."""
    if not names:
        return
    with read_transaction(engine) as connection:
        known = set(type_names(connection))
    from eas_controller.registry import CONTROL_TYPES

    unknown = sorted(set(names) - known - set(CONTROL_TYPES))
    if unknown:
        raise ValueError("unknown task type(s) %s; registered: %s" % (unknown, ", ".join(sorted(known))))


def registered_types(engine: Engine, selection: Selection | None = None) -> list[str]:
    with read_transaction(engine) as connection:
        names = type_names(connection)
    if selection is not None and selection.task_types:
        names = [name for name in names if name in selection.task_types]
    return names


def _take_out_of_queue(connection: Connection, queue: Queue, attempt_ids: list[int], reason: str, now: float) -> list:
    """Cancel queued attempts (the queue's entries first: claims lock them before the attempts too).

    Returns (attempt id, task id) of the attempts that were still queued.
    """
    queue.remove(connection, attempt_ids)
    return attempt_store.cancel_queued(connection, attempt_ids, reason, now)


# -- empty_queue.py -------------------------------------------------------------------------------------------

def empty_queue(engine: Engine, queue: Queue, selection: Selection, hold: bool = False,
                dry_run: bool = False) -> dict:
    """Take queued attempts out of the queue; their tasks go back to ``ready`` (or ``held``).

    With ``hold`` the selected ``ready`` and ``waiting`` tasks are held too, so that neither a running
    scheduler nor a dependency finishing later queues any of them; :func:`release_held` lets them go.
    Running tasks carry on (a held task's dependencies still count down as they finish).
    """
    target = states.HELD if hold else states.READY

    def body(connection: Connection) -> dict:
        now = time.time()
        candidates = connection.execute(
            sa.select(attempts.c.id).join(tasks, tasks.c.id == attempts.c.task_id)
            .where(attempts.c.state == states.A_QUEUED, selection.condition()).order_by(attempts.c.id)
        ).scalars().all()
        reason = "removed from the queue by empty_queue.py" + (" (task held)" if hold else "")
        taken = _take_out_of_queue(connection, queue, candidates, reason, now)
        task_ids = sorted({task_id for _attempt, task_id in taken})
        task_store.unqueue(connection, task_ids, target, now)  # the attempt never ran: it does not count
        held_ready = len(task_store.hold(connection, selection.condition(), now)) if hold else 0
        return dict(removed=len(taken), tasks=len(task_ids), held_ready=held_ready, target=target)

    return apply(engine, queue, body, dry_run)


def release_held(engine: Engine, selection: Selection, dry_run: bool = False) -> dict:
    """Held tasks become ``ready`` (the scheduler queues them on its next pass), or ``waiting`` if some of
    their dependencies have still to finish."""

    def body(connection: Connection) -> dict:
        return dict(released=len(task_store.unhold(connection, selection.condition(), time.time())))

    return apply(engine, None, body, dry_run)


# -- reschedule_all_unfinished_jobs.py ------------------------------------------------------------------------

def expired_leases(engine: Engine) -> int:
    with read_transaction(engine) as connection:
        return attempt_store.count_expired(connection)


def reschedule_unfinished(engine: Engine, queue: Queue, selection: Selection, default_max_attempts: int = 1,
                          dry_run: bool = False, schedule: bool = True, max_lost_attempts: int = 3,
                          lease_seconds: float = 0.0, say=None) -> dict:
    """Give failed and stalled tasks a new attempt.

    1. Running attempts whose lease expired become ``stalled`` (as the scheduler does); their tasks retry
       by ``max_lost_attempts``. Before that it waits up to ``lease_seconds`` (saying so with ``say``), so
       that the workers of those attempts, if they are alive and were only cut off, renew first.
    2. Failed tasks become ``ready`` (one more attempt each, whatever ``max_attempts`` says); tasks waiting
       out a retry backoff are made ready now; queued or running tasks left without a live attempt (a
       crash at an unlucky moment, a restore) are made ready too. Control tasks that failed after
       expanding are left alone (expanding them again would duplicate their children).
    3. One scheduling pass creates and queues the new attempts.
    """
    from eas_controller.scheduler import PassResult, Scheduler

    scheduler = Scheduler(engine, queue, default_max_attempts, max_lost_attempts=max_lost_attempts)
    stalled = PassResult()
    if dry_run:
        stalled.stalled = expired_leases(engine)
    else:
        wait_for_renewals(engine, lease_seconds, say)
        while True:  # one batch per call
            before = stalled.stalled
            scheduler.recover_stalled(stalled)
            if stalled.stalled - before < scheduler.batch_size:
                break

    def body(connection: Connection) -> dict:
        now = time.time()
        condition = selection.condition()
        failed = len(task_store.reschedule_failed(connection, condition, now))
        skipped_control = connection.execute(sa.select(sa.func.count()).select_from(tasks).where(
            tasks.c.state == states.FAILED, condition, tasks.c.is_control.is_(True), tasks.c.expansions > 0)).scalar()
        backoff = len(task_store.clear_backoff(connection, condition, now))
        active = connection.execute(sa.select(tasks.c.id).where(
            tasks.c.state.in_([states.QUEUED, states.RUNNING]), tasks.c.is_control.is_(False), condition)).scalars().all()
        live = {row.task_id for row in attempt_store.queued_or_running_of_tasks(connection, active)}
        orphans = [task_id for task_id in active if task_id not in live]
        task_store.ready_orphans(connection, orphans, now)
        return dict(stalled=stalled.stalled, stalled_retried=stalled.retried, stalled_failed=stalled.failed,
                    failed=failed, backoff=backoff, orphans=len(orphans), skipped_control=skipped_control)

    report = apply(engine, None, body, dry_run)
    report["promoted"] = 0
    if schedule and not dry_run:
        while True:
            result = scheduler.run_pass()
            report["promoted"] += result.promoted
            if not result.promoted and not result.expanded and not result.finished_control:
                break
    return report


def wait_for_renewals(engine: Engine, lease_seconds: float, say=None) -> None:
    """While attempts have expired leases, wait up to one lease period for their workers to renew them (a
    live worker renews as soon as it reaches the database again)."""
    expired = expired_leases(engine)
    if not expired or lease_seconds <= 0:
        return
    if say is not None:
        say("%d attempt(s) have an expired lease: waiting up to %g s for their workers to renew them" % (
            expired, lease_seconds))
    deadline = time.time() + lease_seconds
    while time.time() < deadline and expired_leases(engine):
        time.sleep(min(1.0, max(0.0, deadline - time.time())))


# -- requeue_lost_messages.py ---------------------------------------------------------------------------------

def requeue_lost(engine: Engine, queue: Queue, selection: Selection, min_age: float = 30.0,
                 dry_run: bool = False) -> dict:
    """Put back queued attempts that their queue lost, and drop entries whose attempt is not queued."""
    names = registered_types(engine, selection)
    report = queue.resync(names, selection.condition(), min_age=min_age, dry_run=dry_run)
    with read_transaction(engine) as connection:
        other = connection.execute(
            sa.select(attempts.c.queue, sa.func.count()).join(tasks, tasks.c.id == attempts.c.task_id)
            .where(attempts.c.state == states.A_QUEUED, selection.condition(),
                   attempts.c.queue.notin_(_labels(queue.name))).group_by(attempts.c.queue)).all()
    report["other_queue"] = {label: count for label, count in other}
    return report


def _labels(name: str) -> list[str]:
    from eas_controller.queues.amqp import CARRIED, HELD, PENDING

    return [CARRIED, PENDING, HELD] if name == CARRIED else [name]


# -- cancel_job.py --------------------------------------------------------------------------------------------

def cancel(engine: Engine, queue: Queue, selection: Selection, dry_run: bool = False) -> dict:
    """Cancel the selected tasks that have not finished; their queued attempts leave the queue and their
    running attempts are cancelled, which the worker's heartbeat notices: it stops the task and discards
    its results."""
    reason = "cancelled by cancel_job.py"

    def body(connection: Connection) -> dict:
        now = time.time()
        task_ids = sorted(task_store.selected(connection, selection.condition(), task_store.CANCEL_FROM))
        queued, running = [], []
        for row in attempt_store.queued_or_running_of_tasks(connection, task_ids):
            (queued if row.state == states.A_QUEUED else running).append(row.id)
        removed = _take_out_of_queue(connection, queue, sorted(queued), reason, now)
        stopped = len(attempt_store.cancel_running(connection, sorted(running), reason, now))
        cancelled = len(task_store.cancel(connection, task_ids, reason, now))
        return dict(tasks=cancelled, queued_removed=len(removed), running_stopped=stopped)

    return apply(engine, queue, body, dry_run)


# -- display_message_queue.py ---------------------------------------------------------------------------------

def queue_status(engine: Engine, queue: Queue, task_types: list[str] | None = None, everything: bool = False) -> list[dict]:
    """Per task type: attempts queued and running (from SQL), the oldest queued attempt's age, and what
    the queue itself holds (rows of the SQL queue, or ready messages and consumers in RabbitMQ)."""
    now = time.time()
    with read_transaction(engine) as connection:
        names = type_names(connection)
        counts: dict[str, dict] = {}
        for row in connection.execute(
                sa.select(attempts.c.task_type, attempts.c.state, sa.func.count().label("n"),
                          sa.func.min(attempts.c.queued_at).label("oldest"))
                .where(attempts.c.state.in_([states.A_QUEUED, states.A_RUNNING]))
                .group_by(attempts.c.task_type, attempts.c.state)):
            entry = counts.setdefault(row.task_type, dict(queued=0, running=0, oldest=None))
            entry[row.state] = row.n
            if row.state == states.A_QUEUED:
                entry["oldest"] = row.oldest
    if task_types:
        names = [name for name in names if name in task_types]
    carried = queue.carried(names)
    rows = []
    for name in names:
        entry = counts.get(name, dict(queued=0, running=0, oldest=None))
        held = carried.get(name, {})
        if not everything and not task_types and not entry["queued"] and not entry["running"] and not held.get("in_queue"):
            continue
        rows.append(dict(task_type=name, queue=queue.name, queued=entry["queued"], running=entry["running"],
                         oldest_queued_s=None if entry["oldest"] is None else round(now - entry["oldest"], 1),
                         in_queue=held.get("in_queue"), consumers=held.get("consumers")))
    return rows


# -- shared command-line flags --------------------------------------------------------------------------------

def add_selection_arguments(parser, dry_run: bool = True) -> None:
    group = parser.add_argument_group("which tasks (default: every task)")
    group.add_argument("--job-name", help="only tasks of the job with this name")
    group.add_argument("--job-id", type=int, help="only tasks of the job with this id")
    group.add_argument("--task-type", action="append", metavar="TYPE",
                       help="only tasks of this type (repeatable, or comma-separated)")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="report what would change; change nothing")


def selection_from(args) -> Selection:
    names = None
    if args.task_type:
        names = sorted({name.strip() for value in args.task_type for name in value.split(",") if name.strip()})
    return Selection(job_name=args.job_name, job_id=args.job_id, task_types=names)
