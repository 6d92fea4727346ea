"""The minimal built-in task types: enough to test the controller and to run arbitrary commands."""

import time


class TaskFailure(Exception):
    """Raised by an implementation to fail its attempt with a clear message (no traceback needed)."""


def do_nothing(ctx) -> None:
    """Succeed at once: the per-task cost of the controller itself is what remains."""


def always_fail(ctx) -> None:
    raise TaskFailure(str(ctx.description.get("message", "this task always fails (task type 'error')")))


def sleep(ctx) -> None:
    seconds = float(ctx.description.get("seconds", 1))
    if seconds < 0:
        raise TaskFailure("seconds must not be negative, not %r" % seconds)
    time.sleep(seconds)
