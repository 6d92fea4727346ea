"""Submitting task chains from Python and following them: :func:`submit` returns a :class:`Job`.

A job is what ``submit.py`` makes from one chain; a *batch* (``add_to_batch``) is a job name that later
submissions add tasks to, as ``launch.py -b NAME`` does. Waiting can drive scheduling passes itself, so a
script needs no scheduler daemon running (passes are safe alongside a daemon: promotion locks the rows it
takes); workers still have to be running somewhere.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eas_controller import states
from eas_controller.chains import Plan
from eas_controller.config import Settings, load_settings
from eas_controller.database.engine import make_engine, read_transaction, write_transaction
from eas_controller.database.schema import attempts, jobs, log_lines, tasks

_engines: dict[str, Engine] = {}


def resolve_settings(settings: Settings | None) -> Settings:
    """The given settings, or those of the environment and settings file (as a script without flags)."""
    return settings if settings is not None else load_settings()


def engine_for(settings: Settings) -> Engine:
    """One engine per database URL for the life of the process, checked for a schema on first use."""
    url = settings.database_url
    if url not in _engines:
        from eas_controller.database.manage import require_schema

        engine = make_engine(url)
        require_schema(engine)
        _engines[url] = engine
    return _engines[url]


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """Where a job stands: ``state`` is ``active`` while anything can still move, then ``done`` (every task
    done), ``failed`` (some task failed) or ``cancelled``; ``counts`` is tasks per state."""

    job_id: int
    state: str
    counts: dict[str, int]

    @property
    def finished(self) -> bool:
        return self.state != "active"


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """One worker task of a job as it ended (or stands now)."""

    task_id: int
    name: str | None
    task_type: str
    chain_path: str
    state: str
    attempts: int
    metadata: dict[str, Any]
    error: str | None


class Job:
    """A submitted job. ``task_ids`` are its worker tasks from this submission, in chain order."""

    def __init__(self, job_id: int, name: str, settings: Settings, task_ids: list[int] | None = None):
        self.id = job_id
        self.name = name
        self.settings = settings
        self.task_ids = list(task_ids or [])

    def __repr__(self) -> str:
        return "Job(id=%d, name=%r)" % (self.id, self.name)

    @property
    def engine(self) -> Engine:
        return engine_for(self.settings)

    def status(self) -> JobStatus:
        from eas_controller.reports import job_is_finished, job_state_counts

        with read_transaction(self.engine) as connection:
            counts = job_state_counts(connection, self.id)
            finished = job_is_finished(connection, self.id)
        return JobStatus(self.id, overall_state(counts, finished), counts)

    def wait(self, timeout: float | None = None, poll_interval: float = 0.2, schedule: bool = True) -> JobStatus:
        """Block until nothing in the job can move any more; :class:`TimeoutError` after ``timeout`` seconds.

        ``schedule``: run scheduling passes while waiting (needed when no scheduler daemon runs).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        scheduler = make_scheduler(self.settings, self.engine) if schedule else None
        while True:
            did_something = scheduler.run_pass().did_something if scheduler else False
            current = self.status()
            if current.finished:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    "job %d (%s) is not finished after %g s: %s"
                    % (self.id, self.name, timeout, _describe(current.counts))
                )
            if not did_something:
                time.sleep(poll_interval)

    def results(self) -> list[TaskResult]:
        """Every worker task of the job (control-flow tasks left out), in id order, with its output metadata."""
        from eas_controller.reports import task_metadata

        with read_transaction(self.engine) as connection:
            rows = connection.execute(
                sa.select(
                    tasks.c.id,
                    tasks.c.name,
                    tasks.c.task_type,
                    tasks.c.chain_path,
                    tasks.c.state,
                    tasks.c.attempt_count,
                    tasks.c.error_text,
                )
                .where(tasks.c.job_id == self.id, tasks.c.is_control.is_(False))
                .order_by(tasks.c.id)
            ).all()
            metadata = task_metadata(connection, [row.id for row in rows])
        return [
            TaskResult(
                row.id,
                row.name,
                row.task_type,
                row.chain_path,
                row.state,
                row.attempt_count,
                metadata.get(row.id, {}),
                row.error_text,
            )
            for row in rows
        ]


def overall_state(counts: dict[str, int], finished: bool) -> str:
    if not finished:
        return "active"
    if counts.get(states.FAILED):
        return "failed"
    if counts.get(states.CANCELLED):
        return "cancelled"
    if set(counts) <= {states.DONE}:
        return "done"
    return "failed"  # waiting or held on something that can never finish


def _describe(counts: dict[str, int]) -> str:
    return ", ".join("%d %s" % (count, state) for state, count in sorted(counts.items())) or "no tasks"


def make_scheduler(settings: Settings, engine: Engine):
    from eas_controller.queues import make_queue
    from eas_controller.scheduler import Scheduler

    return Scheduler(
        engine, make_queue(settings, engine), settings.max_attempts, retry_backoff_s=settings.retry_backoff_s
    )


def _expand(engine: Engine, chain: dict, source: str, job_name: str | None) -> tuple[Plan, dict]:
    from eas_controller.chains import expand_chain
    from eas_controller.registry import load_registry

    with read_transaction(engine) as connection:
        registry = load_registry(connection)
    return expand_chain(chain, source, registry, job_name), {name: t.max_attempts for name, t in registry.items()}


def submit(chain: dict, job_name: str | None = None, settings: Settings | None = None, source: str = "python") -> Job:
    """Validate ``chain`` (a task chain as a dict, as in a job file) and create its tasks in one transaction.

    Raises :class:`eas_controller.chains.ChainError` with the message ``submit.py`` would print.
    """
    settings = resolve_settings(settings)
    engine = engine_for(settings)
    from eas_controller.submission import submit_plan

    plan, max_attempts = _expand(engine, chain, source, job_name)
    with write_transaction(engine) as connection:
        job_id, ids = submit_plan(connection, plan, max_attempts)
    return Job(job_id, plan.job_name, settings, [ids[node.index] for node in plan.worker_tasks])


def add_to_batch(chain: dict, batch: str, settings: Settings | None = None, source: str = "python") -> Job:
    """Add the tasks of ``chain`` to the latest job named ``batch`` (creating it if there is none), in one
    transaction. The tasks' ``job_name`` is ``batch``, so every job-name selection (cancel, diagnostics) sees
    them together."""
    from eas_controller.submission import create_job, write_plan

    settings = resolve_settings(settings)
    engine = engine_for(settings)
    plan, max_attempts = _expand(engine, chain, source, batch)
    with write_transaction(engine) as connection:
        row = connection.execute(
            sa.select(jobs.c.id).where(jobs.c.name == batch).order_by(jobs.c.id.desc()).limit(1)
        ).first()
        job_id = row.id if row is not None else create_job(connection, batch, source)
        ids = write_plan(connection, plan, job_id, max_attempts)
    return Job(job_id, batch, settings, [ids[node.index] for node in plan.worker_tasks])


def task_states(engine: Engine, task_ids: Iterable[int]) -> dict[int, str]:
    from eas_controller.database.engine import chunks

    found: dict[int, str] = {}
    with read_transaction(engine) as connection:
        for chunk in chunks(sorted(set(task_ids))):
            found.update(connection.execute(sa.select(tasks.c.id, tasks.c.state).where(tasks.c.id.in_(chunk))).all())
    return found


def latest_attempt(engine: Engine, task_id: int):
    """The newest attempt row of a task (id, state, exit_status, error_text), or None."""
    with read_transaction(engine) as connection:
        return connection.execute(
            sa.select(attempts.c.id, attempts.c.state, attempts.c.exit_status, attempts.c.error_text)
            .where(attempts.c.task_id == task_id)
            .order_by(attempts.c.id.desc())
            .limit(1)
        ).first()


def log_lines_after(engine: Engine, task_id: int, after_id: int = 0, limit: int = 1000) -> list:
    """Log lines of every attempt of a task with an id above ``after_id`` (id, attempt_id, stream, message)."""
    with read_transaction(engine) as connection:
        attempt_ids = sa.select(attempts.c.id).where(attempts.c.task_id == task_id)
        return connection.execute(  # by attempt: the log table's index is (attempt_id, id)
            sa.select(
                log_lines.c.id, log_lines.c.attempt_id, log_lines.c.stream, log_lines.c.severity, log_lines.c.message
            )
            .where(log_lines.c.attempt_id.in_(attempt_ids), log_lines.c.id > after_id)
            .order_by(log_lines.c.id)
            .limit(limit)
        ).all()
