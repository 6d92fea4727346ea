"""Reusable child processes for ``python:`` implementations.

A fresh interpreter per task costs tens of milliseconds, too much for pipelines of 10^5 short tasks. Each
worker slot keeps one child (started with ``spawn``, so it shares no database connection or thread with
the worker) and sends it one attempt at a time over a pipe. The child leads its own process group, so a
timeout kills whatever the task started too; it is recycled after a number of tasks, a crash or a kill.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import threading
import time
import traceback

from eas_controller.worker.execution import KILL_GRACE_S, Outcome, PreparedAttempt, kill_process_group

MAX_TASKS_PER_CHILD = 1000


def _child_main(connection, nice: int) -> None:
    """Loop in the child: receive a request, run the function, send back the result."""
    os.setsid()
    if nice:
        os.nice(nice)
    from eas_controller.registry import import_callable
    from eas_controller.task_api import TaskContext
    from eas_controller.tasks.builtin import TaskFailure

    functions: dict = {}
    while True:
        try:
            request = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if request is None:
            return
        connection.send(_run_request(request, functions, import_callable, TaskContext, TaskFailure))


def _run_request(request: dict, functions: dict, import_callable, TaskContext, TaskFailure) -> dict:
    saved_environment = dict(os.environ)
    saved_directory = os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    usage_before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    error = None
    context = None
    try:
        os.environ.update(request["environment"])
        os.chdir(request["work_dir"])
        with open(request["stdout_path"], "ab") as out, open(request["stderr_path"], "ab") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
        context = TaskContext(request["environment"], request["description"], request["inputs"], request["outputs"],
                              request["metadata_in"])
        function = functions.get(request["target"])
        if function is None:
            function = functions[request["target"]] = import_callable(request["target"])
        function(context)
    except TaskFailure as failure:
        error = str(failure) or failure.__class__.__name__
    except SystemExit as exit_request:
        if exit_request.code not in (None, 0):
            error = "the task called sys.exit(%r)" % (exit_request.code,)
    except BaseException:  # the whole traceback is the explanation the user needs
        error = traceback.format_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        os.close(saved_fds[0])
        os.close(saved_fds[1])
        os.chdir(saved_directory)
        os.environ.clear()
        os.environ.update(saved_environment)
    usage_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (usage_after[0].ru_utime + usage_after[0].ru_stime) - (usage_before[0].ru_utime + usage_before[0].ru_stime)
    children = (usage_after[1].ru_utime + usage_after[1].ru_stime) - (usage_before[1].ru_utime + usage_before[1].ru_stime)
    return dict(
        error=error,
        wall_s=time.time() - started,
        cpu_s=own,
        cpu_children_s=own + children,
        metadata=context.output_metadata if context else {},
        log_lines=context.log_lines if context else [],
    )


class PythonChild:
    """One reusable child process; used by one worker slot (thread) at a time."""

    def __init__(self, nice: int = 0):
        self.nice = nice
        self.process = None
        self.connection = None
        self.tasks_run = 0

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self.process = context.Process(target=_child_main, args=(child_end, self.nice), daemon=True,
                                       name="eas-python-task")
        self.process.start()
        child_end.close()
        self.connection = parent_end
        self.tasks_run = 0

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def run(self, prepared: PreparedAttempt, metadata_in: dict, stop_event: threading.Event | None = None) -> Outcome:
        if not self.alive() or self.tasks_run >= MAX_TASKS_PER_CHILD:
            self.close()
            self._start()
        request = dict(
            target=prepared.task_type.target, environment=prepared.environment, work_dir=prepared.work_dir,
            stdout_path=prepared.stdout_path, stderr_path=prepared.stderr_path, description=prepared.description,
            inputs=prepared.inputs, outputs=prepared.outputs, metadata_in=metadata_in,
        )
        started = time.time()
        self.connection.send(request)
        self.tasks_run += 1
        timeout = prepared.task_type.timeout_s
        deadline = started + timeout if timeout else None
        stopped = False
        while True:
            wait = 0.5 if (deadline or stop_event) else None
            try:
                if self.connection.poll(wait):
                    response = self.connection.recv()
                    break
            except (EOFError, OSError):
                return self._died(started)
            if not self.process.is_alive():
                return self._died(started)
            if deadline and time.time() >= deadline:
                self._kill()
                return Outcome(succeeded=False, error_text="timed out after %g s" % timeout,
                               wall_s=time.time() - started, timed_out=True)
            if stop_event is not None and stop_event.is_set() and not stopped:
                stopped = True
                self._kill()
                return Outcome(succeeded=False, error_text="stopped by the worker", wall_s=time.time() - started)
        return Outcome(
            succeeded=response["error"] is None, exit_status=0 if response["error"] is None else 1,
            error_text=response["error"], wall_s=response["wall_s"], cpu_s=response["cpu_s"],
            cpu_children_s=response["cpu_children_s"], metadata=response["metadata"], log_lines=response["log_lines"],
        )

    def _died(self, started: float) -> Outcome:
        self.process.join(1)
        code = self.process.exitcode
        self.close()
        how = "was killed by signal %d" % -code if code is not None and code < 0 else "exited with status %s" % code
        return Outcome(succeeded=False, exit_status=code, error_text="the task's process %s" % how,
                       wall_s=time.time() - started)

    def _kill(self) -> None:
        kill_process_group(self.process.pid, KILL_GRACE_S, wait=lambda seconds: self.process.join(seconds) or not self.process.is_alive())
        self.close()

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                self.connection.send(None)
            except (OSError, BrokenPipeError):
                pass
            self.process.join(2)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(2)
        try:
            self.connection.close()
        except OSError:
            pass
        self.process = self.connection = None
