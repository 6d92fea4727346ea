"""Workers certainly dead: a worker row of this host whose process is gone.

A worker killed with SIGKILL (the OOM killer, ``kill -9``) leaves its attempts running in the database until
their leases expire, and with them the attempts it had claimed ahead of its slots. When another worker on
the same host starts (the same one restarted, or a neighbour) and finds such a row, the death is certain:
it stalls those attempts at once (each counts as lost, see docs/operations.md), so they are retried without
waiting for the lease, and marks the row stopped. A row whose pid is alive is left to its lease: only the
process table of this host is trusted, and a pid reused by a newer process counts as dead.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import Connection

from eas_controller.retries import RetryPolicy
from eas_controller.store import attempts as attempt_store
from eas_controller.store import logs
from eas_controller.store import tasks as task_store
from eas_controller.store import workers as worker_store

log = logging.getLogger("eas.worker")


def process_gone(pid: int, started_at: float) -> bool:
    """No process ``pid``, or one started after the worker row was written (the pid was reused)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE or process.create_time() > started_at + 1.0
    except psutil.NoSuchProcess:
        return True


def bury_dead_neighbours(connection: Connection, host: str, me: int | None, policy: RetryPolicy) -> int:
    """Stall the attempts of this host's dead workers and mark them stopped. Returns how many attempts."""
    stalled = 0
    now = time.time()
    for row in worker_store.unstopped_on_host(connection, host, other_than=me):
        if not process_gone(row.pid, row.started_at):
            continue
        reason = "worker %s (host %s, pid %d) is gone: its process no longer exists" % (row.name, host, row.pid)
        for attempt in attempt_store.running_of_worker(connection, row.id):
            attempt_store.stall(connection, attempt.id, reason, now, current={attempt.id: attempt.state})
            logs.write_note(connection, attempt.id, attempt.task_id, "WARNING",
                            "attempt %d stalled: %s" % (attempt.number, reason))
            task_store.retry_or_fail(connection, attempt.task_id, reason, now, policy, attempt_id=attempt.id, lost=True)
            stalled += 1
        worker_store.mark_stopped(connection, row.id)
        log.warning("%s; %d of its attempt(s) go back to the queue now, without waiting for their leases",
                    reason, stalled)
    return stalled
