"""Recording an attempt's result: one fenced transaction.

Fencing: the attempt row is locked and must still be ``running`` under this worker, else the worker lost
ownership (its lease expired and the task went to someone else, or the task was cancelled) and its late
results are discarded: no product is published, no log line, metadata or timing is stored. The same
transaction publishes the products, stores the log lines, the product versions, the output metadata and
the timings, then finishes the task and releases the tasks that waited for it — or schedules a retry.

A lost connection while committing leaves the worker not knowing whether the commit happened; the retry
tells the cases apart (see :func:`record_outcomes`), so a result is never recorded twice nor a product
left behind by an attempt that lost its lease in the meantime.
"""

from __future__ import annotations

import dataclasses
import os
import time

from sqlalchemy.engine import Connection

from eas_controller import products, states, uris
from eas_controller.retries import RetryPolicy
from eas_controller.store import attempts as attempt_store
from eas_controller.store import logs
from eas_controller.store import metadata as metadata_store
from eas_controller.store import products as product_store
from eas_controller.store import tasks as task_store
from eas_controller.worker import transfer
from eas_controller.worker.execution import Outcome, PreparedAttempt, check_outputs, read_output_metadata

LOST = "lost"
RELEASED = "released"
RELEASE_NOTE = "released: the worker shut down before the task finished (not counted as a failure)"


def inspect_outputs(prepared: PreparedAttempt, outcome: Outcome, check_products=None) -> dict[str, dict]:
    """Size, md5 and QC of each staged output; turns a success into a failure when something is missing
    or a product fails QC.

    Runs before the transaction (hashing large files must not hold database locks). ``check_products``
    is ``PythonChild.check_products`` (QC runs in the child, never in the worker process). Outputs given as
    s3:// URIs are uploaded here, once everything passed, to temporary keys the transaction moves into place
    (see :mod:`.transfer`); a failed upload fails the attempt and leaves nothing behind.
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
            if uris.is_uri(facts["path"]):
                relative = uris.local_name(facts["path"])
            else:
                relative = os.path.relpath(facts["path"], prepared.data_dir) if prepared.data_dir else os.path.basename(facts["path"])
            facts.update(path=products.quarantine_path(prepared.data_dir, prepared.attempt_id, relative),
                         state="failed_qc" if facts["qc_state"] == "failed" else None)
        return made
    try:
        transfer.stage_uploads(prepared, made)
    except transfer.TransferError as error:
        outcome.succeeded = False
        outcome.error_text = str(error)
        return {}
    return made


@dataclasses.dataclass
class Completion:
    """One finished attempt waiting to be recorded: what ran, how it went, what it made."""

    prepared: PreparedAttempt
    outcome: Outcome
    made: dict
    release: bool = False
    publication: products.Publication = dataclasses.field(default_factory=transfer.Publication)
    started_at: float | None = None  # when the slot started it (a prefetched attempt starts after its claim)

    def __post_init__(self) -> None:
        if isinstance(self.publication, transfer.Publication):
            if isinstance(self.prepared.transfer, transfer.Transfer) and self.publication.transfer is None:
                self.publication.transfer = self.prepared.transfer
            self.publication.expect(self.made)  # uploads this completion publishes, or deletes

    @property
    def attempt_id(self) -> int:
        return self.prepared.attempt_id


def record_outcomes(connection: Connection, worker: dict, items: list[Completion], policy: RetryPolicy,
                    queue=None) -> list[str]:
    """The completion transaction's body for a group of attempts. Returns each attempt's new state, ``lost``
    or ``released``.

    Each attempt is fenced on its own (one ``SELECT ... FOR UPDATE`` locks them all); what succeeded is
    written with one statement per kind of row for the whole group, so recording ten results costs little
    more than recording one. With ``queue`` (a queue whose entries are rows of this database), plain
    tasks that the successes made ready are queued in the same transaction: the next task of a chain is
    claimable the moment this commits, without waiting for a scheduler pass.

    Run it through ``run_transaction`` with the same items on every try: if an earlier try's commit went
    through (its reply was lost), an attempt is already final under this worker and that is returned; if
    the attempt was taken from us meanwhile, files an earlier try published are taken back before ``lost``
    is returned.
    """
    owners = attempt_store.lock_for_completion(connection, [item.attempt_id for item in items])
    now = time.time()
    results: list[str | None] = [None] * len(items)
    updates, log_rows, done, failures, metadata_rows, replaced = [], [], [], [], [], []
    done_states: dict[int, str] = {}
    for index, item in enumerate(items):
        owner, publication = owners[item.attempt_id], item.publication
        ours = owner.worker_id == worker["id"]
        if publication.tried and ours and owner.state in (states.A_SUCCEEDED, states.A_FAILED):
            publication.commit()
            results[index] = owner.state
            continue
        if publication.tried and ours and owner.state == states.A_CANCELLED and owner.error_text == RELEASE_NOTE:
            results[index] = RELEASED
            continue
        if owner.state != states.A_RUNNING or not ours:
            publication.undo()
            results[index] = LOST
            continue
        publication.tried = True
        prepared, outcome = item.prepared, item.outcome
        attempt_id, task_id = item.attempt_id, prepared.claim["task_id"]
        lines = list(outcome.log_lines) + prepared.logs.take()
        outcome.log_lines = lines  # kept for the next try if this transaction does not commit
        log_rows.extend(logs.rows_for(attempt_id, task_id, lines))
        if item.release:
            attempt_store.release(connection, attempt_id, task_id, now, RELEASE_NOTE, outcome.wall_s,
                                  current={attempt_id: owner.state})
            results[index] = RELEASED
            continue
        succeeded = outcome.succeeded
        for facts in item.made.values():
            if succeeded:
                publication.publish(facts.get("upload") or facts["staged"], facts["path"])
            else:
                publication.quarantine(facts["staged"], facts["path"])
        product_store.record_versions(connection, task_id, attempt_id, item.made)
        updates.append(dict(
            b_id=attempt_id, b_state=states.A_SUCCEEDED if succeeded else states.A_FAILED, b_ended_at=now,
            b_started_at=item.started_at or prepared.claim.get("started_at", now), b_exit_status=outcome.exit_status,
            b_wall_s=outcome.wall_s, b_cpu_s=outcome.cpu_s, b_cpu_children_s=outcome.cpu_children_s,
            b_error_text=None if succeeded else logs.clip(outcome.error_text or "failed"),
        ))
        if succeeded:
            if prepared.claim.get("number", 0) != 1:  # only an earlier success leaves metadata behind
                replaced.append(task_id)
            metadata_rows.extend(metadata_store.rows_for(task_id, attempt_id, outcome.metadata))
            metadata_rows.extend(metadata_store.input_rows(task_id, attempt_id, prepared.fetched))
            done.append(task_id)
            done_states[task_id] = owner.task_state
            results[index] = states.A_SUCCEEDED
        else:
            failures.append((task_id, attempt_id, (outcome.error_text or "failed").strip().splitlines()[-1][:1000]))
            results[index] = states.A_FAILED
    if updates:
        attempt_store.finish(connection, updates, worker["id"], {row_id: row.state for row_id, row in owners.items()})
    logs.insert_rows(connection, log_rows)
    metadata_store.clear(connection, replaced)
    metadata_store.insert_rows(connection, metadata_rows)
    if done:
        _moved, dependants = task_store.finish_done(connection, done, now, current=done_states)
        if queue is not None and dependants:
            ready = task_store.ready_plain_tasks(connection, dependants)
            queue.enqueue(connection, attempt_store.create(connection, ready, queue.name, now,
                                                           current={row.id: task_store.QUEUE_FROM[0] for row in ready}))
    for task_id, attempt_id, reason in failures:
        task_store.retry_or_fail(connection, task_id, reason, now, policy, attempt_id=attempt_id)
    return results
