"""The heartbeat: every third of the lease, renew the leases of the attempts this worker still owns, write
their new log lines and the worker's row (last seen, free slots) — independently of how busy the tasks keep
the CPU, since tasks run in other processes. Attempts it no longer owns (cancelled, or stalled while this
worker was paused or cut off) are stopped, and claims whose reply was lost are released."""

from __future__ import annotations

import logging
import time

from eas_controller import states
from eas_controller.database.engine import run_transaction
from eas_controller.store import attempts as attempt_store
from eas_controller.store import logs as log_store
from eas_controller.store import workers as worker_store
from eas_controller.worker.attempt import first_line

log = logging.getLogger("eas.worker")

ORPHAN_NOTE = ("released: the worker never received this claim (the database connection was lost while it "
               "committed); not counted as a failure")


class HeartbeatMixin:
    """The :class:`~eas_controller.worker.service.Worker`'s heartbeat thread."""

    def _heartbeat(self) -> None:
        """Beat every third of the lease; while the database is out of reach, try every second, so that the
        leases are renewed as soon as it is back (the scheduler waits a lease period after an outage)."""
        interval = max(0.05, self.lease_seconds / 3)
        failing_since, wait = None, interval
        while not self.heartbeat_stop.wait(wait):
            try:
                self.beat()
                if failing_since is not None:
                    log.info("heartbeat: database reachable again after %.0f s; leases renewed",
                             time.time() - failing_since)
                    failing_since = None
                wait = interval
            except Exception as error:
                if failing_since is None:
                    failing_since = time.time()
                    log.warning("heartbeat failed (%s); trying again every %.1f s until the database answers",
                                first_line(str(error))[:200], min(interval, 1.0))
                wait = min(interval, 1.0)

    def beat(self) -> None:
        """Renew the leases of the attempts this worker still owns, write their new log lines, update the
        worker's row; stop the attempts it no longer owns and release orphaned claims."""
        now = time.time()
        # Read the claim marker before taking the list of running attempts: an attempt claimed after
        # ``now`` may be missing from the list, but it is also excluded from the orphans.
        cutoff = min(now, self.claiming_since or now)
        with self.running_lock:
            current = list(self.running.values())
        pending = {}  # attempt id -> lines taken from its buffer (written only if the attempt is still ours)
        for running in current:
            if running.logs.write_lock.acquire(blocking=False):
                pending[running.attempt_id] = running.logs.take()
        by_id = {running.attempt_id: running for running in current}
        me = self.record["id"]

        def body(connection):
            lost, orphans = {}, []
            if by_id:
                found = attempt_store.lock_owned(connection, list(by_id), me)
                for attempt_id, state in found.items():
                    ours = state in states.ATTEMPT_STATES  # else "<state>, held by worker N"
                    if state != states.A_RUNNING and not (ours and by_id[attempt_id].recording):
                        lost[attempt_id] = state.split(",")[0]  # recording: the completion is ending it
                renewed = attempt_store.renew_leases(connection, list(by_id), me, self.lease_seconds, current=found)
                for attempt_id in renewed.moved:
                    log_store.write_lines(connection, attempt_id, by_id[attempt_id].claim["task_id"],
                                          pending.get(attempt_id, []))
            for row in attempt_store.orphaned(connection, me, cutoff, list(by_id)):
                if attempt_store.release(connection, row.id, row.task_id, now, ORPHAN_NOTE, owner=me).moved:
                    orphans.append(row.id)
            worker_store.heartbeat(connection, me, now, self.capacity.free_slots, list(self.types), self.stopping.is_set())
            return lost, orphans

        try:
            lost, orphans = run_transaction(self.engine, body, attempts=3)
        except BaseException:
            for attempt_id, lines in pending.items():
                by_id[attempt_id].logs.put_back(lines)
            raise
        finally:
            for attempt_id in pending:
                by_id[attempt_id].logs.write_lock.release()
        for attempt_id in orphans:
            log.warning("attempt %d was claimed for this worker but the claim's reply was lost with the database "
                        "connection: released back to the queue", attempt_id)
        for attempt_id, state in lost.items():
            running = by_id[attempt_id]
            if running.lost:
                continue
            running.lost = state if state == states.A_CANCELLED else (
                "the attempt is now %s (the lease expired while this worker was paused or cut off, and the task "
                "was given to another attempt)" % state)
            log.warning("lost ownership of attempt %d (task %d): it is now %s; stopping the task", attempt_id,
                        running.claim["task_id"], state)
            running.stop.set()
