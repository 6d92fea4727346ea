"""Idle waiting: how long an idle worker waits between claims, and (PostgreSQL) being woken when work is queued.

For ``idle_after_s`` (60 s) after it last claimed or ran anything, an idle worker polls at most every
``--poll-interval`` (1 s; each wait drawn between 0.75 and 1 times that, so that workers started together
drift apart). After that its wait doubles, from the poll interval up to
``idle_poll_max_s`` (15 s): an idle fleet costs the database a fraction of the statements. On PostgreSQL a
listener thread holds one more connection in ``LISTEN eas_queue``; every transaction that queues SQL-queue
rows sends ``NOTIFY eas_queue`` (:func:`eas_controller.store.sql_queue.insert`), and the listener wakes the
main loop at once, so a long-idle worker still picks up new work without delay; the long wait is then only
a safety poll (setting ``queue_notifications`` false: no listener, e.g. behind a pooler in transaction
mode, which cannot keep a ``LISTEN``). Elsewhere (MariaDB/MySQL, SQLite) the first task after a long idle period waits up to
``idle_poll_max_s``. Work that becomes claimable without a new queue row (a concurrency-limit slot freed by
a completion) is found by the next poll.
"""

from __future__ import annotations

import random
import threading
import time

from eas_controller.backoff import Backoff
from eas_controller.database import dialects


#: An idle wait within the first ``idle_after_s`` is between (1 - POLL_SPREAD) and 1 times its nominal length.
POLL_SPREAD = 0.25


class IdleWaitMixin:
    """The :class:`~eas_controller.worker.service.Worker`'s idle waiting (its main loop and a listener thread)."""

    def _init_idle_wait(self) -> None:
        self.idle_after = self.settings.idle_after_s
        self.idle_poll_max = max(self.poll_interval, self.settings.idle_poll_max_s)
        # jittered: workers started together would otherwise all poll in the same instant, every time
        self.long_idle = Backoff(self.poll_interval, self.idle_poll_max, jitter=0.5)
        self.active_at = time.time()  # last claim, or last round with attempts running or waiting
        self.notifications = 0  # wake-ups by the listener (for the closing log line and the tests)
        self.listener_thread: threading.Thread | None = None

    def _note_activity(self, claimed: int) -> None:
        if claimed or self.running:
            self.active_at = time.time()
            self.long_idle.reset()

    def idle_delay(self) -> float:
        delay = self.idle.next()
        if time.time() - self.active_at < self.idle_after:
            # never longer than the poll interval, and spread below it: workers started together (a Slurm
            # array, a deployment) would otherwise poll in step, and the first of them to see new work
            # would be, on average, as late as any one
            return delay * (1.0 - POLL_SPREAD * random.random())
        return max(delay, min(self.idle_poll_max, self.long_idle.next()))

    # -- PostgreSQL: LISTEN ------------------------------------------------------------------------------
    def _start_listener(self) -> None:
        if (self.queue.name != "sql" or not self.settings.queue_notifications
                or not dialects.has_notifications(self.engine)):
            return
        self.listener_thread = threading.Thread(target=self._listen, name="listener", daemon=True)
        self.listener_thread.start()

    def _listen(self) -> None:
        listener = dialects.QueueListener(self.engine)
        failures = Backoff(1.0, 30.0)
        try:
            while not self.heartbeat_stop.is_set() and not self.stopping.is_set():
                try:
                    woke = listener.wait(1.0)
                except Exception as error:  # noqa: BLE001 - an outage: polling goes on meanwhile
                    delay = failures.next()
                    self._database_retry(error, delay)
                    self.stopping.wait(delay)
                    continue
                failures.reset()
                if woke:
                    self.notifications += 1
                    self.log.debug("woken: work was queued")
                    self.wake.set()
        finally:
            listener.close()
