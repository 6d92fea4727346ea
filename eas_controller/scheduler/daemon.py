"""The scheduling daemon (``schedule_all_waiting_tasks.py``): a pass, then another, for as long as it runs.

Built like the worker, on :class:`~eas_controller.poller.Poller`: an idle pass waits ``scheduler_interval``
before the next one, a database outage is ridden out with backoff, SIGTERM or Ctrl-C ends it after the
current pass. It prints one line per pass that did something, and (once, then every ten minutes) what no
live worker can run.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from eas_controller import metrics
from eas_controller.capacity import describe_unmet, unmet_needs
from eas_controller.database.engine import is_retryable, read_transaction
from eas_controller.poller import Poller
from eas_controller.scheduler.maintenance import QueueVacuum
from eas_controller.scheduler.passes import Scheduler
from eas_controller.scheduler.status import StatusCounts, status_line

log = logging.getLogger("eas.scheduler")

#: How often an idle daemon checks for work that no live worker can take, and how often it repeats it.
UNMET_CHECK_S = 30.0
UNMET_REPEAT_S = 600.0


class SchedulerDaemon(Poller):
    log = log

    def __init__(self, engine: Engine, scheduler: Scheduler, interval: float, verbose: bool = False):
        super().__init__(idle_min=interval, idle_max=interval, failure_min=2.0, failure_max=10.0)
        self.engine = engine
        self.scheduler = scheduler
        self.verbose = verbose
        self.counts = StatusCounts(engine)
        self._unmet_checked = 0.0
        self._unmet_said = ("", 0.0)
        self.queue_vacuum = QueueVacuum(engine)

    def poll(self) -> bool:
        started = time.time()
        result = self.scheduler.run_pass()
        metrics.scheduler_pass(result)
        self.queue_vacuum.run_if_due()
        if result.did_something or self.verbose:
            log.info("pass: %s (%.2f s)", status_line(self.engine, result, self.counts.get()), time.time() - started)
        elif time.time() - self._unmet_checked > UNMET_CHECK_S:
            self._say_unmet()
        return result.did_something

    def _say_unmet(self) -> None:
        self._unmet_checked = time.time()
        with read_transaction(self.engine) as connection:
            unmet = describe_unmet(unmet_needs(connection))
        said, when = self._unmet_said
        if unmet and (unmet != said or self._unmet_checked - when > UNMET_REPEAT_S):
            log.warning(unmet)
            self._unmet_said = (unmet, self._unmet_checked)

    def survives(self, error: Exception) -> bool:
        return isinstance(error, DBAPIError) and is_retryable(error)

    def on_failure(self, error: Exception, delay: float) -> None:
        log.warning("database unavailable (%s); next pass in %.0f s", str(getattr(error, "orig", error)).splitlines()[0][:200],
                    delay)

    def on_recovered(self) -> None:
        log.info("database reachable again")

    def run(self, once: bool = False) -> int:
        self.install_signal_handlers()
        self.run_loop(once=once)
        return 0
