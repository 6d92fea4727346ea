"""Why is this task where it is? The answer in plain sentences, each with a code a program can test.

It reads the task, what it waits for (files and metadata from other tasks, children of a control task),
its type's resource needs against every live worker, retry backoff and holds, and its attempts.
"""

from __future__ import annotations

import json
import posixpath
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.schema import attempts, products, task_dependencies, task_types, tasks
from eas_controller.store import limits as limit_store
from eas_controller.views import NotFound
from eas_controller.views.output import rounded, when
from eas_controller.views.workers import live_workers

RESOURCES = (("cpu", "cpus"), ("gpu", "gpus"), ("memory_gb", "memory_gb"))


class UnknownTask(NotFound):
    """No task has the given id."""


def explain_task(connection: Connection, task_id: int, default_max_attempts: int = 1,
                 now: float | None = None) -> dict:
    """The facts about one task and ``reasons``: a list of {code, text} saying why it is where it is."""
    now = time.time() if now is None else now
    task = connection.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()
    if task is None:
        raise UnknownTask("no task with id %d" % task_id)
    label = "task %d (%s%s)" % (task.id, task.task_type, " %r" % task.name if task.name else "")
    tries = _attempts(connection, task_id)
    # the limit in force now; a task that used more attempts ran under a higher one (the setting changed)
    max_attempts = max(task.max_attempts or default_max_attempts, task.attempt_count if task.state == states.FAILED else 0)
    reasons: list[dict] = []

    def say(code: str, text: str, **facts) -> None:
        reasons.append(dict(code=code, text=text, **facts))

    waits = _dependencies(connection, task)
    unmet = [dep for dep in waits if not dep["satisfied"]]
    state = task.state
    if state == states.DONE and task.reused_from_attempt_id is not None:
        source = connection.execute(sa.select(attempts.c.task_id, attempts.c.number)
                                    .where(attempts.c.id == task.reused_from_attempt_id)).first()
        say("reused", "%s is done without running: submit.py --resume reused the results of %s." % (
            label, "attempt %d of task %d" % (source.number, source.task_id) if source else
            "attempt id %d" % task.reused_from_attempt_id), reused_from_attempt_id=task.reused_from_attempt_id)
    elif state == states.DONE:
        last = tries[-1] if tries else None
        say("done", "%s is done%s." % (label, " (attempt %d succeeded on %s after %.3g s)" % (
            last["number"], last["worker"], last["wall_s"] or 0) if last and last["state"] == states.A_SUCCEEDED else ""))
    elif state == states.FAILED:
        say("failed_final", "%s failed after its last attempt (%d of at most %d): %s" % (
            label, task.attempt_count, max_attempts, _first_line(task.error_text) or "no error recorded"),
            attempts_used=task.attempt_count, max_attempts=max_attempts)
        say("hint", "reschedule_all_unfinished_jobs.py --job-name %s runs it again." % task.job_name)
    elif state == states.CANCELLED:
        say("cancelled", "%s was cancelled (cancel_job.py); it will not run unless rescheduled." % label)
    elif state == states.HELD:
        say("held", "%s is held out of the queue (empty_queue.py --hold); empty_queue.py --release lets it run." % label)
    elif state == states.WAITING or (state == states.RUNNING and task.is_control):
        _explain_waiting(task, label, unmet, say)
    if state == states.READY:
        if task.not_before is not None and task.not_before > now:
            say("retry_backoff", "%s is in retry backoff after attempt %d failed (%s); the scheduler queues it again "
                "at %s UTC, in %.0f s (attempt %d of at most %d)." % (
                    label, task.attempt_count, _first_line(task.error_text) or "no error recorded",
                    when(task.not_before), task.not_before - now, task.attempt_count + 1, max_attempts),
                not_before=task.not_before, seconds_left=round(task.not_before - now, 1))
        elif task.needs_evaluation:
            say("needs_evaluation", "%s is ready; its fields are evaluated from the metadata it requested when the "
                "scheduler queues it." % label)
        else:
            say("ready", "%s is ready: the next scheduler pass queues it (is schedule_all_waiting_tasks.py or the "
                "scheduler daemon running?)." % label)
    limit = _concurrency_limit(connection, task)
    if limit is not None and state in (states.READY, states.QUEUED) and limit["running"] >= limit["max"]:
        say("waiting_concurrency_limit", "%s waits for concurrency limit %s: %d of %d running (attempt%s %s)." % (
            label, limit["key"], limit["running"], limit["max"], "" if len(limit["running_attempts"]) == 1 else "s",
            ", ".join(map(str, limit["running_attempts"]))), **limit)
    if state in (states.READY, states.QUEUED, states.HELD) and not task.is_control:
        _explain_workers(connection, task, label, say, now)
    if state == states.QUEUED:
        queued = next((a for a in reversed(tries) if a["state"] == states.A_QUEUED), None)
        if queued:
            say("queued", "%s is queued (attempt %d) since %.0f s." % (label, queued["number"], now - queued["queued_at"]),
                queued_s=round(now - queued["queued_at"], 1))
    if state == states.RUNNING and not task.is_control:
        current = next((a for a in reversed(tries) if a["state"] == states.A_RUNNING), None)
        if current:
            lease = current["lease_expires_at"]
            say("running", "%s is running: attempt %d on worker %s (host %s, pid %s) since %s UTC, %.0f s ago; its "
                "lease %s." % (label, current["number"], current["worker"], current["host"], current["pid"],
                               when(current["started_at"]), now - (current["started_at"] or now),
                               "expires in %.0f s" % (lease - now) if lease and lease > now else
                               "has expired: the scheduler will mark the attempt stalled and retry"),
                attempt=current["number"], worker=current["worker"], host=current["host"])
        else:
            say("running", "%s is running." % label)
    for attempt in tries:
        if attempt["state"] in (states.A_FAILED, states.A_STALLED):
            say("attempt_" + attempt["state"], "Attempt %d %s on %s at %s UTC: %s" % (
                attempt["number"], attempt["state"], attempt["worker"] or "?", when(attempt["ended_at"]) or "?",
                _first_line(attempt["error"]) or ("worker lost" if attempt["state"] == states.A_STALLED else "")),
                attempt=attempt["number"])
    return dict(task_id=task.id, job_id=task.job_id, job_name=task.job_name, task_name=task.name,
                task_type=task.task_type, state=state, is_control=bool(task.is_control),
                attempt_count=task.attempt_count, max_attempts=max_attempts, not_before=task.not_before,
                error=task.error_text, dependencies=waits, attempts=tries, concurrency_limit=limit,
                reasons=reasons, codes=[reason["code"] for reason in reasons])


def _explain_waiting(task, label: str, unmet: list[dict], say) -> None:
    if not unmet and task.state == states.WAITING:
        say("waiting", "%s waits, but every dependency is met: the next scheduler pass makes it ready." % label)
    children = [dep for dep in unmet if dep["kind"] == "child"]
    if task.is_control and task.state == states.RUNNING:
        say("waiting_children", "%s is a control task: it finishes when its %d unfinished child task(s) do "
            "(unmet dependencies: %d)." % (label, len(children) or task.unmet_dependencies, task.unmet_dependencies))
    for dep in unmet:
        if dep["kind"] == "child":
            continue
        what = ("file %s" % dep["product"]) if dep["kind"] == "file" else "its output metadata"
        producer = "task %d (%s%s)" % (dep["requires_task_id"], dep["producer_type"],
                                      " %r" % dep["producer_name"] if dep["producer_name"] else "")
        if dep["producer_state"] in (states.FAILED, states.CANCELLED):
            say("producer_failed", "%s waits for %s from %s, which %s: it will not run unless that task is rescheduled "
                "(reschedule_all_unfinished_jobs.py)." % (label, what, producer, dep["producer_state"]),
                producer_id=dep["requires_task_id"], producer_state=dep["producer_state"])
        elif dep["kind"] == "file":
            say("waiting_input", "%s waits for %s from %s, which is %s." % (label, what, producer, dep["producer_state"]),
                producer_id=dep["requires_task_id"], producer_state=dep["producer_state"])
        else:
            say("waiting_metadata", "%s waits for %s from %s, which is %s." % (label, what, producer,
                                                                                dep["producer_state"]),
                producer_id=dep["requires_task_id"], producer_state=dep["producer_state"])


def _explain_workers(connection: Connection, task, label: str, say, now: float) -> None:
    live = live_workers(connection, now)
    kind = connection.execute(sa.select(task_types).where(task_types.c.name == task.task_type)).first()
    needs = {key: (getattr(kind, key) or 0) if kind is not None else 0 for key, _column in RESOURCES}
    if not live:
        say("no_live_worker", "No worker is live (none seen in the last 2 minutes): start one with worker.py.")
        return
    def fits(worker) -> bool:
        return all(needs[key] <= (worker[column] or 0) + 1e-9 for key, column in RESOURCES)

    need_text = ", ".join("%s=%g" % (key, needs[key]) for key, _c in RESOURCES)
    runners = [w for w in live if task.task_type in w["capabilities"]]
    # A worker leaves out of its capabilities the types that can never fit it, so "too big" is judged
    # against every live worker when none lists the type.
    candidates = runners or live
    fitting = [w for w in candidates if fits(w)]
    if not fitting:
        biggest = ", ".join("%s=%g" % (key, max(w[column] or 0 for w in candidates)) for key, column in RESOURCES)
        say("too_big", "%s is too big for every live worker%s: it needs %s; the largest offer is %s." % (
            label, " that runs %s" % task.task_type if runners else "", need_text, biggest), needs=needs)
        return
    if not runners:
        say("no_worker_for_type", "No live worker runs task type %s (%d live worker(s): %s); start one whose "
            "--task-types include it." % (task.task_type, len(live), ", ".join(sorted(w["name"] for w in live)[:10])),
            task_type=task.task_type)
        return
    free = sum(w["free_slots"] for w in fitting)
    say("workers_fit", "%d live worker(s) run %s and have room for it (needs %s); %d slot(s) free now." % (
        len(fitting), task.task_type, need_text, free), workers=[w["name"] for w in fitting], free_slots=free)


def _concurrency_limit(connection: Connection, task) -> dict | None:
    """The task's concurrency limit now: key, max, running (count) and running_attempts (ids); None if it has none."""
    if task.limit_key is None:
        return None
    running = limit_store.running_attempts_of(connection, task.limit_key)
    maximum = limit_store.limit_of(connection, task.limit_key)
    return dict(key=task.limit_key, max=maximum if maximum is not None else 0, running=len(running),
                running_attempts=running[:100])


def _dependencies(connection: Connection, task) -> list[dict]:
    """What the task waits for; for a file, the producer's products that the task reads (the dependency
    row names the producer, the task's ``inputs`` name the files)."""
    producer = tasks.alias("producer")
    rows = connection.execute(
        sa.select(task_dependencies.c.requires_task_id, task_dependencies.c.kind, task_dependencies.c.satisfied,
                  producer.c.state, producer.c.task_type, producer.c.name)
        .join(producer, producer.c.id == task_dependencies.c.requires_task_id)
        .where(task_dependencies.c.task_id == task.id).order_by(task_dependencies.c.id).limit(1000)).all()
    try:
        inputs = json.loads(task.description).get("inputs") or {}
    except (ValueError, AttributeError):
        inputs = {}
    reads = {posixpath.normpath(posixpath.join(task.working_directory or "", str(name))) for name in inputs.values()}
    result = []
    for row in rows:
        files = None
        if row.kind == "file":
            made = connection.execute(sa.select(products.c.relative_path).where(
                products.c.task_id == row.requires_task_id)).scalars().all()
            files = sorted(path for path in made if posixpath.normpath(path) in reads) or sorted(made)
        result.append(dict(requires_task_id=row.requires_task_id, kind=row.kind, satisfied=bool(row.satisfied),
                           producer_state=row.state, producer_type=row.task_type, producer_name=row.name,
                           product=", ".join(files) if files else None))
    return result


def _attempts(connection: Connection, task_id: int) -> list[dict]:
    rows = connection.execute(sa.select(attempts).where(attempts.c.task_id == task_id).order_by(attempts.c.number)).all()
    return [dict(attempt_id=row.id, number=row.number, state=row.state, worker=row.worker_name, host=row.host,
                 pid=row.pid, queued_at=row.queued_at, started_at=row.started_at, ended_at=row.ended_at,
                 lease_expires_at=row.lease_expires_at, wall_s=rounded(row.wall_s), exit_status=row.exit_status,
                 error=row.error_text) for row in rows]


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:300] if lines else ""


def render_explanation(result: dict) -> str:
    """The explanation as plain sentences, then the attempts."""
    lines = [reason["text"] for reason in result["reasons"] if not reason["code"].startswith("attempt_")]
    if result["attempts"]:
        lines.append("")
        lines.append("attempts:")
        for attempt in result["attempts"]:
            lines.append("  #%d %s on %s, started %s, %s s%s" % (
                attempt["number"], attempt["state"], attempt["worker"] or "-", when(attempt["started_at"]) or "-",
                attempt["wall_s"] if attempt["wall_s"] is not None else "-",
                (": " + _first_line(attempt["error"])) if attempt["error"] else ""))
    return "\n".join(lines)
