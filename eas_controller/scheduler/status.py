"""The scheduler daemon's one line per pass: what the pass did and where the work stands."""

from __future__ import annotations

import time

from sqlalchemy.engine import Engine

from eas_controller import states
from eas_controller.capacity import describe_unmet, unmet_needs
from eas_controller.database.engine import read_transaction
from eas_controller.store import tasks as task_store


class StatusCounts:
    """Counting the tasks reads every unfinished one (~0.1 s per 100,000 waiting on MariaDB), so the counts
    are refreshed once 20 times their cost has passed: with a large backlog printing stays a small share of
    the daemon's time (the counts are then up to a few seconds old); with a small one, every pass."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._counts: tuple[float, float, dict] | None = None  # (when, cost in s, counts)

    def get(self) -> dict[str, int]:
        now = time.time()
        if self._counts is None or now - self._counts[0] >= 20 * self._counts[1]:
            started = time.perf_counter()
            with read_transaction(self.engine) as connection:
                counts = task_store.unfinished_counts(connection)
            self._counts = (now, time.perf_counter() - started, counts)
        return self._counts[2]


def status_line(engine: Engine, result, counts: dict[str, int] | None = None) -> str:
    """One line for a screen session: what this pass did and where the work stands."""
    with read_transaction(engine) as connection:
        counts = task_store.unfinished_counts(connection) if counts is None else counts
        unmet = describe_unmet(unmet_needs(connection))
    parts = ["promoted %d" % result.promoted]
    for label, value in (("expanded", result.expanded), ("loops/chains finished", result.finished_control),
                         ("failed", result.failed), ("stalled", result.stalled), ("retried", result.retried),
                         ("re-published", result.republished)):
        if value:
            parts.append("%s %d" % (label, value))
    parts.append("now: %d waiting, %d ready, %d queued, %d running" % tuple(
        counts.get(state, 0) for state in (states.WAITING, states.READY, states.QUEUED, states.RUNNING))
        + (", %d held" % counts[states.HELD] if counts.get(states.HELD) else ""))
    if unmet:
        parts.append(unmet)
    return ", ".join(parts)
