"""Exponential backoff, the one helper behind every "wait longer each time" of the controller: database
retries, a worker's claim loop and idle polling, the scheduler daemon, the broker connection, task retries."""

from __future__ import annotations

import random


def exponential_delay(tries: int, initial: float, maximum: float, jitter: float = 0.0) -> float:
    """``initial * 2**tries`` capped at ``maximum``; ``jitter`` j spreads it over [1 - j/2, 1 + j/2) of that."""
    delay = min(maximum, initial * (2 ** min(tries, 60)))
    if jitter:
        delay *= 1.0 - jitter / 2 + jitter * random.random()
    return delay


class Backoff:
    """A delay that doubles at each :meth:`next` up to ``maximum`` and starts over at :meth:`reset`."""

    def __init__(self, initial: float, maximum: float, jitter: float = 0.0):
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.tries = 0

    def next(self) -> float:
        delay = exponential_delay(self.tries, self.initial, self.maximum, self.jitter)
        self.tries += 1
        return delay

    def reset(self) -> None:
        self.tries = 0
