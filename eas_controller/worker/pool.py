"""Reusable child processes for ``python:`` implementations and QC checks.

A fresh interpreter per task costs tens of milliseconds, too much for pipelines of 10^5 short tasks. Each
worker slot keeps one child (:mod:`.child`, a new interpreter that shares no database connection or
thread with the worker) and sends it one request at a time over a socket. The child leads its own process
group, so a timeout kills whatever the task started too; it is recycled after a number of tasks, a crash
or a kill. Its stdout and stderr are pipes read here line by line while the task runs; the child flushes
them before it replies, so once the reply is in, what the pipes still hold is the rest of that request's
output (no end markers: they cost two writes, two reads and a wake-up or two per task).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

from eas_controller.worker.child import END_MARK
from eas_controller.worker.execution import KILL_GRACE_S, Outcome, PreparedAttempt, child_setup, kill_tree
from eas_controller.worker.logs import LogBuffer, PipeLines, read_available

#: A fresh child costs ~65 ms of CPU (interpreter, imports): every 10,000 tasks that is ~0.007 ms a task.
MAX_TASKS_PER_CHILD = 10_000
#: In a batch, how long a task's end marks may follow its reply (a descendant of the task can hold the pipes).
MARK_WAIT_S = 1.0
#: After the reply, at most this much is read from each pipe (a descendant of the task may still be writing).
DRAIN_LIMIT_BYTES = 1 << 22
_BOOT = "import sys; sys.path.insert(0, %r); from eas_controller.worker.child import main; main()"
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

log = logging.getLogger("eas.worker")


class ChildDied(Exception):
    """The child exited (crash, kill) before replying."""


class PythonChild:
    """One reusable child process; used by one worker slot (thread) at a time."""

    def __init__(self, nice: int = 0):
        self.nice = nice
        self.process: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.selector: selectors.BaseSelector | None = None
        self.pipes: dict[int, PipeLines] = {}
        self.tasks_run = 0
        self.requests = 0
        self.last_exit_code: int | None = None  # of the previous child, once closed

    # -- life cycle ------------------------------------------------------------------------------------
    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT % _PROJECT_ROOT, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=child_setup(self.nice),
            )
        finally:
            theirs.close()
        self.connection = Connection(ours.detach())
        self.connection.send(dict(sys_path=list(sys.path)))
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.connection.fileno(), selectors.EVENT_READ, "reply")
        self.pipes = {}
        for stream, pipe in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self.pipes[pipe.fileno()] = PipeLines(stream)
            self.selector.register(pipe.fileno(), selectors.EVENT_READ, stream)
        self.tasks_run = 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start_ahead(self) -> None:
        """Start the child now, while the slot is idle, so that the first task does not wait for an
        interpreter to start; a child that cannot start is started again at the first task."""
        if self.alive():
            return
        try:
            self._start()
        except OSError as error:
            log.warning("could not start a task child ahead: %s", error)
            self.close()

    def close(self) -> None:
        """Ask the child to exit (kill it if it does not) and release its pipes."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.connection.send(None)
            except OSError:
                pass
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                kill_tree(self.process.pid, 0.5, lambda: self.process.poll() is not None)
                self.process.wait()
        self.last_exit_code = self.process.returncode
        self.selector.close()
        for handle in (self.connection, self.process.stdout, self.process.stderr):
            try:
                handle.close()
            except OSError:
                pass
        self.process = self.connection = self.selector = None
        self.pipes = {}

    def _kill(self) -> None:
        kill_tree(self.process.pid, KILL_GRACE_S, lambda: self.process.poll() is not None)
        self.process.wait()
        self.close()

    # -- requests --------------------------------------------------------------------------------------
    def _call(self, request: dict, sink: LogBuffer, timeout: float | None, stop_event) -> tuple[str, dict | None]:
        """Send one request; return ("ok", reply), ("timeout"|"stopped", None) or ("died", None).

        Reads the child's output into ``sink`` while waiting, and what is left in the pipes once the reply
        is in; a line a descendant of the task prints later goes to the next request.
        """
        if not self.alive() or self.tasks_run >= MAX_TASKS_PER_CHILD:
            self.close()
            self._start()
        self.requests += 1
        started = time.time()
        deadline = started + timeout if timeout else None
        try:
            self.connection.send(request)
        except OSError:
            self.close()
            return "died", None
        while True:
            wait = 0.5
            if deadline:
                wait = max(0.0, min(wait, deadline - time.time()))
            for key, _mask in self.selector.select(wait):
                if key.data == "reply":
                    try:
                        reply = self.connection.recv()
                    except (EOFError, OSError):
                        self._drain(sink)
                        self._kill()
                        return "died", None
                    self._drain(sink, DRAIN_LIMIT_BYTES)
                    return "ok", reply
                data = read_available(key.fd)
                if data is None:
                    continue
                lines = self.pipes.get(key.fd)
                if lines is None:
                    continue
                if not data:
                    lines.finish(sink)
                    self.selector.unregister(key.fd)
                    self.pipes.pop(key.fd)
                else:
                    lines.feed(data, sink)
            if self.process.poll() is not None:
                self._drain(sink)
                self.close()
                return "died", None
            if deadline and time.time() >= deadline:
                self._kill()
                return "timeout", None
            if stop_event is not None and stop_event.is_set():
                self._kill()
                return "stopped", None

    def _drain(self, sink: LogBuffer, limit: int | None = None) -> None:
        """What the pipes hold now: the rest of a request's output, or the last output of a child that died
        (its traceback, a segfault message)."""
        for fd, lines in list(self.pipes.items()):
            taken = 0
            while limit is None or taken < limit:
                try:
                    data = os.read(fd, 1 << 16)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    lines.finish(sink)
                    self.pipes.pop(fd)
                    if self.selector is not None:
                        try:
                            self.selector.unregister(fd)
                        except (KeyError, ValueError):
                            pass
                    break
                taken += len(data)
                lines.feed(data, sink)
            lines.finish(sink)  # a last line without a newline belongs to this request too

    def run(self, prepared: PreparedAttempt, metadata_in: dict, stop_event=None) -> Outcome:
        """Run a ``python:`` implementation; output goes to ``prepared.logs`` as it is printed."""
        started = time.time()
        timeout = prepared.task_type.timeout_s
        status, reply = self._call(_run_request(prepared, metadata_in), prepared.logs, timeout, stop_event)
        self.tasks_run += 1
        return self._outcome(status, reply, prepared, time.time() - started)

    def run_batch(self, batch: list) -> Iterator[tuple[int, Outcome]]:
        """Run short ``python:`` tasks as one request, back to back in the child; yield (index, Outcome) in
        order as each finishes, with its output (up to the child's end mark) in its own log. One round trip
        for the batch: the child goes on to the next task while the worker records the last.

        ``batch``: (prepared attempt, metadata_in, stop event) per task. A timeout, a stop or a crash ends
        the batch: that task's outcome is the last one yielded, and the tasks after it never started."""
        if not self.alive() or self.tasks_run + len(batch) > MAX_TASKS_PER_CHILD:
            self.close()
            self._start()
        self.requests += 1
        sent = time.time()
        try:
            self.connection.send(dict(kind="batch", requests=[_run_request(prepared, metadata_in)
                                                              for prepared, metadata_in, _stop in batch]))
        except OSError:
            self.close()
            yield 0, self._outcome("died", None, batch[0][0], 0.0)
            return
        marks = {fd: _MarkedPipe() for fd in self.pipes}  # which task each pipe's bytes belong to now

        def sink_of(index: int) -> LogBuffer:  # bytes after the last mark: a descendant of the last task
            return batch[min(index, len(batch) - 1)][0].logs

        replies: list = []  # (reply, when it was read)
        current, begun = 0, sent  # the first task without an outcome, and when it began at the earliest
        while current < len(batch):
            if len(replies) > current:
                reply, read_at = replies[current]
                # its end marks are in the pipes before its reply: only a descendant holding them open and a
                # full pipe can delay them, and then not for longer than MARK_WAIT_S
                if all(mark.index > current for mark in marks.values()) or time.time() - read_at > MARK_WAIT_S:
                    self.tasks_run += 1
                    yield current, self._outcome("ok", reply, batch[current][0], reply["wall_s"])
                    begun = reply["started_at"] + reply["wall_s"]
                    current += 1
                    continue
            prepared, _metadata_in, stop_event = batch[current]
            timeout = prepared.task_type.timeout_s
            deadline = begun + timeout if timeout else None
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.time()))
            if len(replies) > current:
                wait = min(wait, MARK_WAIT_S)
            died = False
            for key, _mask in self.selector.select(wait):
                if key.data == "reply":
                    try:
                        replies.append((self.connection.recv(), time.time()))
                        while self.connection.poll():
                            replies.append((self.connection.recv(), time.time()))
                    except (EOFError, OSError):
                        died = True
                    continue
                data = read_available(key.fd)
                if data is not None and key.fd in marks:
                    self._feed_marked(key.fd, data, marks, sink_of)
            if len(replies) > current and not died:
                continue
            if died or self.process.poll() is not None:
                for fd in list(marks):  # the rest of the output: the last task's traceback, a segfault message
                    while fd in marks and (data := read_available(fd)):
                        self._feed_marked(fd, data, marks, sink_of)
                if died:
                    self._kill()
                else:
                    self.close()
                for index in range(current, len(replies)):  # finished before the child died
                    self.tasks_run += 1
                    reply = replies[index][0]
                    yield index, self._outcome("ok", reply, batch[index][0], reply["wall_s"])
                if len(replies) < len(batch):
                    yield len(replies), self._outcome("died", None, batch[len(replies)][0], time.time() - begun)
                return
            if deadline and time.time() >= deadline:
                self._kill()
                yield current, self._outcome("timeout", None, prepared, time.time() - begun)
                return
            if stop_event is not None and stop_event.is_set():
                self._kill()
                yield current, self._outcome("stopped", None, prepared, time.time() - begun)
                return

    def _feed_marked(self, fd: int, data: bytes, marks: dict, sink_of) -> None:
        """Bytes of one pipe during a batch, split at the end marks; b"" (the pipe closed) ends its marks."""
        lines = self.pipes.get(fd)
        if lines is None:
            marks.pop(fd, None)
            return
        mark = marks[fd]
        if data:
            mark.feed(data, lines, sink_of)
            return
        if mark.held:
            lines.feed(mark.held, sink_of(mark.index))
        lines.finish(sink_of(mark.index))
        marks.pop(fd)
        self.pipes.pop(fd)
        if self.selector is not None:
            self.selector.unregister(fd)

    def _outcome(self, status: str, reply: dict | None, prepared: PreparedAttempt, wall: float) -> Outcome:
        timeout = prepared.task_type.timeout_s
        if status == "timeout":
            return Outcome(succeeded=False, error_text="timed out after %g s" % timeout, wall_s=wall, timed_out=True)
        if status == "stopped":
            return Outcome(succeeded=False, error_text="stopped by the worker", wall_s=wall, stopped=True)
        if status == "died":
            code = self.last_exit_code
            how = "was killed by signal %d" % -code if code is not None and code < 0 else "exited with status %s" % code
            return Outcome(succeeded=False, exit_status=code, error_text="the task's process %s" % how, wall_s=wall)
        prepared.logs.extend(reply["log_lines"])
        return Outcome(
            succeeded=reply["error"] is None, exit_status=0 if reply["error"] is None else 1,
            error_text=reply["error"], wall_s=reply["wall_s"], cpu_s=reply["cpu_s"],
            cpu_children_s=reply["cpu_children_s"], metadata=reply["metadata"], started_at=reply.get("started_at"),
        )

    def check_products(self, target: str, paths: dict[str, str], sink: LogBuffer, timeout: float | None = None,
                       stop_event=None) -> dict[str, tuple[bool, str | None]]:
        """Run the QC function ``target`` on each product; a crash or timeout fails every product."""
        status, reply = self._call(dict(kind="qc", target=target, paths=paths), sink, timeout, stop_event)
        if status == "ok":
            return {semantic: (passed, message) for semantic, (passed, message) in reply["verdicts"].items()}
        reason = {"timeout": "QC check timed out after %g s" % (timeout or 0), "stopped": "QC check stopped",
                  "died": "the QC check's process died"}[status]
        return {semantic: (False, reason) for semantic in paths}


def _run_request(prepared: PreparedAttempt, metadata_in: dict) -> dict:
    return dict(
        kind="run", target=prepared.task_type.target, environment=prepared.environment, work_dir=prepared.work_dir,
        description=prepared.description, inputs=prepared.inputs, outputs=prepared.outputs, metadata_in=metadata_in,
        deferred_files=prepared.deferred_files, resources=prepared.resources,
    )


class _MarkedPipe:
    """One pipe's bytes during a batch: ``index`` is the task they belong to now; an end mark moves it on.
    A mark cut in two by a read is held back until the rest comes."""

    def __init__(self) -> None:
        self.index = 0
        self.held = b""

    def feed(self, data: bytes, lines: PipeLines, sink_of) -> None:
        data = self.held + data
        while (at := data.find(END_MARK)) >= 0:
            if at:
                lines.feed(data[:at], sink_of(self.index))
            lines.finish(sink_of(self.index))  # a last line without a newline is that task's too
            self.index += 1
            data = data[at + len(END_MARK):]
        keep = next((size for size in range(min(len(data), len(END_MARK) - 1), 0, -1)
                     if data.endswith(END_MARK[:size])), 0)
        self.held = data[len(data) - keep:] if keep else b""
        if len(data) > keep:
            lines.feed(data[:len(data) - keep], sink_of(self.index))
