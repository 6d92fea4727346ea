"""What to do when an attempt did not succeed: try again (and when), or give up. A pure decision.

The scheduler (an attempt whose lease expired) and the worker (an attempt that failed) both ask
:meth:`RetryPolicy.decide` with the task's history; the store carries the decision out.
"""

from __future__ import annotations

import dataclasses

from eas_controller.backoff import exponential_delay

#: The longest wait between two attempts of a task, however many failed before.
MAX_RETRY_BACKOFF_S = 3600.0


@dataclasses.dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float  # when ``retry``: how long after now the next attempt may start
    used: int  # attempts counted against the limit
    limit: int


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """A task's own failures (exit status, exception, timeout) and the attempts it lost with its worker (the
    lease expired: OOM killer, evicted pod, preempted node, a Slurm time limit) are counted apart.

    An own failure is retried while the task has failed fewer than ``max_attempts`` times (its type's, else
    ``default_max_attempts``); a lost attempt is retried, whatever ``max_attempts`` says, while the task has
    lost fewer than ``max_lost_attempts`` (a task that kills its worker each time ends failed). The n-th
    retry waits ``backoff_s * 2**(n-1)`` seconds, at most :data:`MAX_RETRY_BACKOFF_S`."""

    default_max_attempts: int = 1
    backoff_s: float = 5.0
    max_lost_attempts: int = 3

    def decide(self, failed: int, lost: int, max_attempts: int | None, was_lost: bool) -> Decision:
        """``failed`` / ``lost``: the task's attempts so far that failed / were lost, the one just ended
        included; ``was_lost``: which of the two just happened."""
        used, limit = (lost, self.max_lost_attempts) if was_lost else (failed, max_attempts or self.default_max_attempts)
        if used < limit:
            delay = exponential_delay(max(0, failed + lost - 1), self.backoff_s, MAX_RETRY_BACKOFF_S)
            return Decision(True, delay, used, limit)
        return Decision(False, 0.0, used, limit)
