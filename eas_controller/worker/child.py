"""The reusable child process that runs ``python:`` implementations and QC checks (see :mod:`.pool`).

Started by the worker as ``python -c ... <socket fd>``; it imports nothing heavy itself, receives the
worker's ``sys.path`` first, then one request at a time. Its stdout and stderr are pipes the worker reads
line by line; after each request it writes an end marker on both, so every line is attributed to the
right attempt, then sends the reply.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys
import time
import traceback


def main() -> None:
    from multiprocessing.connection import Connection

    connection = Connection(int(sys.argv[1]))
    init = connection.recv()
    sys.path[:] = init["sys_path"]
    sys.stdout.reconfigure(line_buffering=True)  # a pipe: print() lines would otherwise wait for 8 KiB
    functions: dict = {}
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if request is None:
            return
        if request["kind"] == "qc":
            reply = _check_products(request, functions)
        else:
            reply = _run_task(request, functions)
        sys.stdout.flush()
        sys.stderr.flush()
        marker = request["marker"].encode() + b"\n"
        os.write(1, marker)
        os.write(2, marker)
        connection.send(reply)


def _function(reference: str, functions: dict):
    function = functions.get(reference)
    if function is None:
        module_name, _, name = reference.partition(":")
        function = functions[reference] = getattr(importlib.import_module(module_name), name)
    return function


def _run_task(request: dict, functions: dict) -> dict:
    from eas_controller.task_api import TaskContext
    from eas_controller.tasks.builtin import TaskFailure

    saved_environment = dict(os.environ)
    saved_directory = os.getcwd()
    usage_before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    error = None
    context = None
    try:
        os.environ.update(request["environment"])
        os.chdir(request["work_dir"])
        context = TaskContext(request["environment"], request["description"], request["inputs"], request["outputs"],
                              request["metadata_in"])
        _function(request["target"], functions)(context)
    except TaskFailure as failure:
        error = str(failure) or failure.__class__.__name__
    except SystemExit as exit_request:
        if exit_request.code not in (None, 0):
            error = "the task called sys.exit(%r)" % (exit_request.code,)
    except BaseException:  # the whole traceback is the explanation the user needs
        error = traceback.format_exc()
    finally:
        os.chdir(saved_directory)
        _restore_environment(saved_environment)
    usage_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (usage_after[0].ru_utime + usage_after[0].ru_stime) - (usage_before[0].ru_utime + usage_before[0].ru_stime)
    children = (usage_after[1].ru_utime + usage_after[1].ru_stime) - (usage_before[1].ru_utime + usage_before[1].ru_stime)
    return dict(
        error=error, wall_s=time.time() - started, cpu_s=own, cpu_children_s=own + children,
        metadata=context.output_metadata if context and error is None else {},
        log_lines=context.log_lines if context else [],
    )


def _restore_environment(saved: dict) -> None:
    """Put back the environment as it was before the task, touching only what changed (clearing and refilling
    the whole environment costs a libc call per variable, per task)."""
    current = dict(os.environ)
    for key in current.keys() - saved.keys():
        del os.environ[key]
    for key, value in saved.items():
        if current.get(key) != value:
            os.environ[key] = value


def _check_products(request: dict, functions: dict) -> dict:
    """Run the QC function on each product: {semantic type: [passed, message]}."""
    verdicts = {}
    for semantic, path in request["paths"].items():
        try:
            verdict = _function(request["target"], functions)(path)
            if isinstance(verdict, tuple):
                passed, message = bool(verdict[0]), (str(verdict[1]) if len(verdict) > 1 and verdict[1] else None)
            else:
                passed, message = bool(verdict), None
        except Exception as error:  # a QC check that crashes is a failed check, with the reason
            passed, message = False, "QC check %s raised %s: %s" % (request["target"], error.__class__.__name__, error)
        verdicts[semantic] = [passed, message]
    return dict(verdicts=verdicts)


if __name__ == "__main__":
    main()
