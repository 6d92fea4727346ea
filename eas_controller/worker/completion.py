"""Recording an attempt's result: one fenced transaction.

Fencing: the attempt row is locked and must still be ``running`` under this worker, else the worker lost
ownership (its lease expired and the task went to someone else, or the task was cancelled) and its late
results are discarded: no product is published, no log line, metadata or timing is stored. The same
transaction publishes the products, stores the log lines, the product versions, the output metadata and
the timings, then finishes the task and releases the tasks that waited for it — or schedules a retry.

A lost connection while committing leaves the worker not knowing whether the commit happened; the retry
tells the cases apart (see :func:`record_outcome`), so a result is never recorded twice nor a product
left behind by an attempt that lost its lease in the meantime.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import lifecycle, products, states
from eas_controller.database.schema import attempts, log_lines, tasks
from eas_controller.scheduler import retry_or_fail
from eas_controller.worker.execution import Outcome, PreparedAttempt, check_outputs, read_output_metadata
from eas_controller.worker.logs import clip

LOST = "lost"
RELEASED = "released"
RELEASE_NOTE = "released: the worker shut down before the task finished (not counted as a failure)"


def inspect_outputs(prepared: PreparedAttempt, outcome: Outcome, check_products=None) -> dict[str, dict]:
    """Size, md5 and QC of each staged output; turns a success into a failure when something is missing
    or a product fails QC.

    Runs before the transaction (hashing large files must not hold database locks). ``check_products``
    is ``PythonChild.check_products`` (QC runs in the child, never in the worker process).
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
    for semantic, staged in prepared.outputs.items():
        made[semantic] = dict(path=prepared.final_outputs[semantic], size=os.path.getsize(staged),
                              md5=products.md5_of(staged), staged=staged, qc_state="unchecked", state="made")
    qc = prepared.task_type.qc
    if qc and made and check_products is not None:
        verdicts = check_products(qc, {semantic: facts["staged"] for semantic, facts in made.items()}, prepared.logs,
                                  prepared.task_type.timeout_s)
        for semantic, (passed, message) in verdicts.items():
            made[semantic].update(qc_state="passed" if passed else "failed", qc_message=message)
    failed_qc = [semantic for semantic, facts in made.items() if facts["qc_state"] == "failed"]
    if failed_qc:
        outcome.succeeded = False
        outcome.failed_qc = True
        outcome.error_text = "product(s) failed QC: %s" % ", ".join(
            "%s (%s)" % (semantic, made[semantic].get("qc_message") or "rejected") for semantic in failed_qc)
        for semantic, facts in made.items():  # kept aside for inspection, never where readers look
            relative = os.path.relpath(facts["path"], prepared.data_dir) if prepared.data_dir else os.path.basename(facts["path"])
            facts.update(path=products.quarantine_path(prepared.data_dir, prepared.attempt_id, relative),
                         state="failed_qc" if facts["qc_state"] == "failed" else None)
    return made


def record_outcome(connection: Connection, worker: dict, prepared: PreparedAttempt, outcome: Outcome,
                   made: dict[str, dict], default_max_attempts: int, retry_backoff_s: float,
                   release: bool = False, publication: products.Publication | None = None) -> str:
    """The completion transaction's body. Returns the attempt's new state, ``lost`` or ``released``.

    Run it through ``run_transaction`` with the same ``publication`` on every try: if an earlier try's
    commit went through (its reply was lost), the attempt is already final under this worker and that
    is returned; if the attempt was taken from us meanwhile, files an earlier try published are taken
    back before ``lost`` is returned.
    """
    publication = publication if publication is not None else products.Publication()
    attempt_id = prepared.attempt_id
    task_id = prepared.claim["task_id"]
    owner = connection.execute(
        sa.select(attempts.c.state, attempts.c.worker_id, attempts.c.error_text)
        .where(attempts.c.id == attempt_id).with_for_update()
    ).one()
    ours = owner.worker_id == worker["id"]
    if publication.tried and ours and owner.state in (states.A_SUCCEEDED, states.A_FAILED):
        publication.commit()
        return owner.state
    if publication.tried and ours and owner.state == states.A_CANCELLED and owner.error_text == RELEASE_NOTE:
        return RELEASED
    if owner.state != states.A_RUNNING or not ours:
        publication.undo()
        return LOST
    publication.tried = True
    logs = list(outcome.log_lines) + prepared.logs.take()
    outcome.log_lines = logs  # kept for the next try if this transaction does not commit
    now = time.time()
    if release:
        release_attempt(connection, attempt_id, task_id, now, outcome.wall_s)
        write_log_lines(connection, attempt_id, task_id, logs)
        return RELEASED
    succeeded = outcome.succeeded
    for facts in made.values():
        if succeeded:
            publication.publish(facts["staged"], facts["path"])
        else:
            publication.quarantine(facts["staged"], facts["path"])
    products.record_versions(connection, task_id, attempt_id, made)
    connection.execute(
        attempts.update().where(attempts.c.id == attempt_id).values(
            state=states.A_SUCCEEDED if succeeded else states.A_FAILED, ended_at=now, exit_status=outcome.exit_status,
            wall_s=outcome.wall_s, cpu_s=outcome.cpu_s, cpu_children_s=outcome.cpu_children_s,
            error_text=None if succeeded else clip(outcome.error_text or "failed"),
        )
    )
    write_log_lines(connection, attempt_id, task_id, logs)
    if succeeded:
        first_attempt = prepared.claim.get("number", 0) == 1  # only an earlier success leaves metadata behind
        lifecycle.write_task_metadata(connection, task_id, attempt_id, outcome.metadata, replace=not first_attempt)
        lifecycle.finish_task(connection, task_id, states.DONE)
        return states.A_SUCCEEDED
    reason = (outcome.error_text or "failed").strip().splitlines()[-1][:1000]
    retry_or_fail(connection, task_id, reason, now, default_max_attempts, retry_backoff_s, attempt_id=attempt_id)
    return states.A_FAILED


def release_attempt(connection: Connection, attempt_id: int, task_id: int, now: float, wall_s: float | None = None,
                    note: str = RELEASE_NOTE) -> None:
    """Give a running attempt back: it ends ``cancelled`` (not a failure) and its task is ready again."""
    connection.execute(attempts.update().where(attempts.c.id == attempt_id).values(
        state=states.A_CANCELLED, ended_at=now, wall_s=wall_s, error_text=note))
    connection.execute(tasks.update().where(tasks.c.id == task_id, tasks.c.state == states.RUNNING).values(
        state=states.READY, attempt_count=tasks.c.attempt_count - 1, not_before=None, updated_at=now))


def write_log_lines(connection: Connection, attempt_id: int, task_id: int, lines: list) -> None:
    if lines:
        connection.execute(
            log_lines.insert(),
            [dict(attempt_id=attempt_id, task_id=task_id, created_at=when, severity=severity, stream=stream,
                  message=clip(message))
             for when, severity, stream, message in lines],
        )
