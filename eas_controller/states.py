"""The named states of tasks and attempts, and the one place that says which transitions are allowed.

A task moves ``waiting -> ready -> queued -> running -> done | failed`` (or ``cancelled``). Control-flow
tasks never reach a worker: the scheduler expands them (``ready -> running``), they wait for their
children (``running`` with unmet dependencies) and finish when the last child is done.
"""

# Task states
WAITING = "waiting"
READY = "ready"
QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
HELD = "held"  # kept out of the queue by empty_queue.py --hold until released (--release)

TASK_STATES = (WAITING, READY, QUEUED, RUNNING, DONE, FAILED, CANCELLED, HELD)
TASK_FINAL_STATES = (DONE, FAILED, CANCELLED)
TASK_ACTIVE_STATES = (READY, QUEUED, RUNNING)

TASK_TRANSITIONS = {
    WAITING: {READY, CANCELLED, RUNNING, HELD},
    READY: {QUEUED, RUNNING, DONE, FAILED, CANCELLED, WAITING, HELD},
    QUEUED: {RUNNING, READY, FAILED, CANCELLED, WAITING, HELD},
    HELD: {READY, WAITING, CANCELLED},
    RUNNING: {DONE, FAILED, READY, QUEUED, CANCELLED, WAITING},
    DONE: {READY},  # a rerun
    FAILED: {READY},  # rescheduled
    CANCELLED: {READY},
}

# Attempt states
A_QUEUED = "queued"
A_RUNNING = "running"
A_SUCCEEDED = "succeeded"
A_FAILED = "failed"
A_STALLED = "stalled"
A_CANCELLED = "cancelled"

ATTEMPT_STATES = (A_QUEUED, A_RUNNING, A_SUCCEEDED, A_FAILED, A_STALLED, A_CANCELLED)
ATTEMPT_TRANSITIONS = {
    A_QUEUED: {A_RUNNING, A_CANCELLED},
    A_RUNNING: {A_SUCCEEDED, A_FAILED, A_STALLED, A_CANCELLED, A_QUEUED},
    A_SUCCEEDED: set(),
    A_FAILED: set(),
    A_STALLED: set(),
    A_CANCELLED: set(),
}


def check_task_transition(old: str, new: str) -> None:
    if new not in TASK_TRANSITIONS.get(old, ()):
        raise ValueError("a task cannot go from %r to %r" % (old, new))


def check_attempt_transition(old: str, new: str) -> None:
    if new not in ATTEMPT_TRANSITIONS.get(old, ()):
        raise ValueError("an attempt cannot go from %r to %r" % (old, new))
