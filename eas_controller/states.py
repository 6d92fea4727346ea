"""The named states of tasks and attempts, and the one table of the transitions allowed between them.

A task moves ``waiting -> ready -> queued -> running -> done | failed`` (or ``cancelled``). Control-flow
tasks never reach a worker: the scheduler expands them (``ready -> running``), they wait for their
children (``running`` with unmet dependencies) and finish when the last child is done.

The store (:mod:`eas_controller.store`) is the only writer of these states. Each of its operations declares
the states it may move a row from with :func:`task_move` / :func:`attempt_move`, which check the moves
against the tables below when the module is imported, and puts those states in its WHERE clause: a row in
any other state is left as it is and reported back.
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
TASK_UNFINISHED_STATES = (WAITING, READY, QUEUED, RUNNING, HELD)

TASK_TRANSITIONS = {
    WAITING: {READY, CANCELLED, HELD},
    READY: {QUEUED, RUNNING, DONE, FAILED, CANCELLED, HELD},
    QUEUED: {RUNNING, READY, FAILED, CANCELLED, HELD},
    HELD: {READY, WAITING, CANCELLED},
    RUNNING: {DONE, FAILED, READY, CANCELLED},
    DONE: set(),
    FAILED: {READY},  # rescheduled
    CANCELLED: set(),
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
    A_RUNNING: {A_SUCCEEDED, A_FAILED, A_STALLED, A_CANCELLED},
    A_SUCCEEDED: set(),
    A_FAILED: set(),
    A_STALLED: set(),
    A_CANCELLED: set(),
}


def _move(table: dict, kind: str, sources, targets) -> tuple[str, ...]:
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    for source in sources:
        for target in targets:
            if target != source and target not in table.get(source, ()):
                raise ValueError("%s cannot go from %r to %r" % (kind, source, target))
    return sources


def task_move(sources, targets) -> tuple[str, ...]:
    """The task states an operation may move rows from into ``targets`` (checked against the table);
    ``target == source`` is allowed (an operation that changes other columns of a row in that state)."""
    return _move(TASK_TRANSITIONS, "a task", sources, targets)


def attempt_move(sources, targets) -> tuple[str, ...]:
    """:func:`task_move` for attempts."""
    return _move(ATTEMPT_TRANSITIONS, "an attempt", sources, targets)
