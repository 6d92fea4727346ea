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
    """``default_max_attempts`` applies to task types that set no ``max_attempts``; the n-th retry waits
    ``backoff_s * 2**(n-1)`` seconds, at most :data:`MAX_RETRY_BACKOFF_S`."""

    default_max_attempts: int = 1
    backoff_s: float = 5.0

    def decide(self, attempts_used: int, max_attempts: int | None) -> Decision:
        limit = max_attempts or self.default_max_attempts
        if attempts_used < limit:
            delay = exponential_delay(max(0, attempts_used - 1), self.backoff_s, MAX_RETRY_BACKOFF_S)
            return Decision(True, delay, attempts_used, limit)
        return Decision(False, 0.0, attempts_used, limit)
