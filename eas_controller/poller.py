"""The loop every long-running role shares: poll, wait with backoff when idle, ride out failures, stop cleanly.

The scheduler daemon and the worker are both a :class:`Poller`: ``poll()`` does one round of work and says
whether it did any; idle rounds wait longer each time (up to ``idle_max``) unless something sets ``wake``;
a failure the role survives (a database or broker outage) waits with its own backoff; SIGTERM or SIGINT
sets ``stopping`` and the loop ends after the current round.
"""

from __future__ import annotations

import logging
import signal
import threading

from eas_controller.backoff import Backoff

#: ``poll()`` returns this to end the loop (a worker in burst mode with nothing left to run).
STOP = "stop"


class Poller:
    """Subclasses implement :meth:`poll`, and may override :meth:`survives`, :meth:`on_failure`,
    :meth:`on_recovered` and :meth:`on_signal`."""

    log = logging.getLogger("eas")

    def __init__(self, idle_min: float, idle_max: float, failure_min: float = 1.0, failure_max: float = 30.0):
        self.stopping = threading.Event()  # stop polling
        self.wake = threading.Event()  # something happened: poll again now
        self.idle = Backoff(idle_min, idle_max)
        self.failures = Backoff(failure_min, failure_max)

    def poll(self):
        """One round of work: truthy if it did something, falsy if idle, :data:`STOP` to end the loop."""
        raise NotImplementedError

    def survives(self, error: Exception) -> bool:
        """Whether the loop waits and tries again after ``error`` (else it is raised)."""
        return True

    def on_failure(self, error: Exception, delay: float) -> None:
        self.log.warning("%s: %s; retrying in %.1f s", error.__class__.__name__,
                         str(error).splitlines()[0][:200] if str(error) else "", delay)

    def on_recovered(self) -> None:
        pass

    def run_loop(self, once: bool = False) -> None:
        while not self.stopping.is_set():
            self.wake.clear()  # before looking: whatever happens from now on wakes the wait below
            try:
                outcome = self.poll()
            except Exception as error:
                if once or not self.survives(error):
                    raise
                delay = self.failures.next()
                self.on_failure(error, delay)
                self.stopping.wait(delay)
                continue
            if self.failures.tries:
                self.failures.reset()
                self.on_recovered()
            if outcome == STOP or once:
                return
            if outcome:
                self.idle.reset()
                continue
            if self.wake.wait(self.idle_delay()):
                self.idle.reset()

    def idle_delay(self) -> float:
        """How long an idle round waits (unless ``wake`` is set): the idle backoff's next step."""
        return self.idle.next()

    def on_signal(self, signum: int) -> None:
        self.log.info("%s received: stopping", signal.Signals(signum).name)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop (from the main thread only: elsewhere signals cannot be caught)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum, _frame):
            self.on_signal(signum)
            self.stopping.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
