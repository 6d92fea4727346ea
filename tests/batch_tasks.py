"""Implementations for the batch tests: short python tasks that print in every way a task can."""

from __future__ import annotations

import os
import sys
import time


def chatter(ctx):
    """Lines on stdout and stderr, one written straight to the file descriptor, one from a subprocess and a
    last one without a newline, all naming the task."""
    tag = ctx.description["tag"]
    print("out %s" % tag)
    print("err %s" % tag, file=sys.stderr)
    sys.stdout.flush()
    os.write(1, b"raw %s\n" % tag.encode())
    os.system("echo sub %s" % tag)
    sys.stdout.write("tail %s" % tag)
    ctx.set_metadata("tag", tag)
    ctx.log("ctx %s" % tag)


def behave(ctx):
    """Per the description: crash the child, sleep past a timeout, or print and return."""
    action = ctx.description.get("action")
    print("start %s" % ctx.description["tag"])
    sys.stdout.flush()
    if action == "crash":
        os._exit(7)
    if action == "sleep":
        time.sleep(ctx.description["seconds"])
