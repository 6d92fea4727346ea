"""Recording an attempt's result: one fenced transaction.

Fencing: the attempt row is locked and must still be ``running`` under this worker, else the worker lost
ownership (its lease expired and the task went to someone else) and its late results are discarded. The
same transaction stores the log lines, the product versions, the output metadata and the timings, then
finishes the task and releases the tasks that waited for it — or schedules a retry.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import lifecycle, products, states
from eas_controller.database.schema import attempts, log_lines, tasks
from eas_controller.registry import import_callable
from eas_controller.scheduler import retry_or_fail
from eas_controller.worker.execution import Outcome, PreparedAttempt, check_outputs, read_output_metadata

LOST = "lost"
RELEASED = "released"


def inspect_outputs(prepared: PreparedAttempt, outcome: Outcome) -> dict[str, dict]:
    """Size, md5 and QC of each staged output; turns a success into a failure when something is missing.

    Runs before the transaction (hashing large files must not hold database locks).
    """
    if not outcome.succeeded:
        return {}
    missing = check_outputs(prepared)
    metadata, metadata_error = read_output_metadata(prepared)
    if missing or metadata_error:
        outcome.succeeded = False
        outcome.error_text = missing or metadata_error
        return {}
    outcome.metadata = dict(metadata, **outcome.metadata)
    made = {}
    qc = import_callable(prepared.task_type.qc) if prepared.task_type.qc else None
    for semantic, staged in prepared.outputs.items():
        facts = dict(path=prepared.final_outputs[semantic], size=os.path.getsize(staged), md5=products.md5_of(staged),
                     staged=staged, qc_state="unchecked")
        if qc is not None:
            try:
                verdict = qc(staged)
                passed, message = verdict if isinstance(verdict, tuple) else (bool(verdict), None)
            except Exception as error:  # a QC check that crashes is a failed check, with the reason
                passed, message = False, "QC check raised %s: %s" % (error.__class__.__name__, error)
            facts.update(qc_state="passed" if passed else "failed", qc_message=message)
        made[semantic] = facts
    failed_qc = [semantic for semantic, facts in made.items() if facts["qc_state"] == "failed"]
    if failed_qc:
        outcome.succeeded = False
        outcome.error_text = "product(s) failed QC: %s" % ", ".join(
            "%s (%s)" % (semantic, made[semantic].get("qc_message") or "rejected") for semantic in failed_qc)
    return made


def record_outcome(connection: Connection, worker: dict, prepared: PreparedAttempt, outcome: Outcome,
                   made: dict[str, dict], default_max_attempts: int, retry_backoff_s: float,
                   release: bool = False) -> str:
    """The completion transaction's body. Returns the attempt's new state, ``lost`` or ``released``."""
    attempt_id = prepared.attempt_id
    task_id = prepared.claim["task_id"]
    owner = connection.execute(
        sa.select(attempts.c.state, attempts.c.worker_id).where(attempts.c.id == attempt_id).with_for_update()
    ).one()
    if owner.state != states.A_RUNNING or owner.worker_id != worker["id"]:
        return LOST
    now = time.time()
    if release:
        connection.execute(attempts.update().where(attempts.c.id == attempt_id).values(
            state=states.A_CANCELLED, ended_at=now, wall_s=outcome.wall_s,
            error_text="released: the worker shut down before the task finished (not counted as a failure)"))
        connection.execute(tasks.update().where(tasks.c.id == task_id).values(
            state=states.READY, attempt_count=tasks.c.attempt_count - 1, updated_at=now))
        write_log_lines(connection, attempt_id, task_id, outcome.log_lines)
        return RELEASED
    succeeded = outcome.succeeded
    if succeeded:
        for facts in made.values():
            if os.path.exists(facts["staged"]):  # already moved if this transaction is being retried
                products.publish(facts["staged"], facts["path"])
    products.record_versions(connection, task_id, attempt_id, made)
    connection.execute(
        attempts.update().where(attempts.c.id == attempt_id).values(
            state=states.A_SUCCEEDED if succeeded else states.A_FAILED, ended_at=now, exit_status=outcome.exit_status,
            wall_s=outcome.wall_s, cpu_s=outcome.cpu_s, cpu_children_s=outcome.cpu_children_s,
            error_text=None if succeeded else (outcome.error_text or "failed")[:60000],
        )
    )
    write_log_lines(connection, attempt_id, task_id, outcome.log_lines)
    if succeeded:
        lifecycle.write_task_metadata(connection, task_id, attempt_id, outcome.metadata)
        lifecycle.finish_task(connection, task_id, states.DONE)
        return states.A_SUCCEEDED
    reason = (outcome.error_text or "failed").strip().splitlines()[-1][:1000]
    retry_or_fail(connection, task_id, reason, now, default_max_attempts, retry_backoff_s)
    return states.A_FAILED


def write_log_lines(connection: Connection, attempt_id: int, task_id: int, lines: list) -> None:
    if lines:
        connection.execute(
            log_lines.insert(),
            [dict(attempt_id=attempt_id, task_id=task_id, created_at=when, severity=severity, stream=stream, message=message)
             for when, severity, stream, message in lines],
        )
