"""An attempt's log: its stdout/stderr lines, the task's own ``ctx.log`` lines and the worker's notes about it.

Lines are timestamped when the worker reads them from the child's pipes (so a line printed at minute 3 of
a long task says minute 3), kept in memory per attempt, written in bulk by the heartbeat while the task
runs (so a running task's log can be read) and by the completion transaction at the end. Both writes are
fenced: lines are only stored while the worker still owns the attempt. Limits keep a runaway task from
filling the database: past ``MAX_LINES_PER_STREAM`` lines a stream is cut with a note.
"""

from __future__ import annotations

import os
import threading
import time

from eas_controller.store.logs import MAX_MESSAGE_BYTES, clip  # noqa: F401 - shared with the store

MAX_LINES_PER_STREAM = 20_000
MAX_LINE_CHARS = 4_000
SEVERITIES = ("DEBUG", "INFO", "WARNING", "ERROR")
STREAM_SEVERITY = {"stdout": "INFO", "stderr": "WARNING"}


class LogBuffer:
    """The lines of one attempt not yet written to the database (thread-safe: pipes, heartbeat, slot)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()  # one writer at a time (heartbeat or completion)
        self.lines: list[tuple] = []  # (time, severity, stream, message)
        self.counts: dict[str, int] = {}

    def add(self, severity: str, stream: str, message: str, when: float | None = None) -> None:
        when = time.time() if when is None else when
        with self.lock:
            count = self.counts.get(stream, 0)
            self.counts[stream] = count + 1
            if count < MAX_LINES_PER_STREAM:
                limit = MAX_LINE_CHARS if stream in STREAM_SEVERITY else None
                self.lines.append((when, severity, stream, message[:limit] if limit else clip(message)))
            elif count == MAX_LINES_PER_STREAM:
                self.lines.append((when, "WARNING", "worker", "%s cut after %d lines" % (stream, count)))

    def extend(self, lines) -> None:
        """Lines the task logged itself (``ctx.log``): (time, severity, stream, message)."""
        for when, severity, stream, message in lines:
            self.add(severity if severity in SEVERITIES else "INFO", stream, str(message), when)

    def take(self) -> list[tuple]:
        """Remove and return the pending lines; give them back with :meth:`put_back` if writing fails."""
        with self.lock:
            lines, self.lines = self.lines, []
        return lines

    def put_back(self, lines: list[tuple]) -> None:
        with self.lock:
            self.lines[:0] = lines


class PipeLines:
    """Splits the bytes of one pipe (stdout or stderr) into timestamped lines for a :class:`LogBuffer`."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.severity = STREAM_SEVERITY.get(stream, "INFO")
        self.partial = b""

    def feed(self, data: bytes, sink: LogBuffer | None) -> None:
        when = time.time()
        self.partial += data
        if b"\n" not in self.partial:
            if len(self.partial) > 4 * MAX_LINE_CHARS:  # a very long line without a newline: cut it here
                self._emit(self.partial, sink, when)
                self.partial = b""
            return
        *complete, self.partial = self.partial.split(b"\n")
        for line in complete:
            self._emit(line, sink, when)

    def finish(self, sink: LogBuffer | None) -> None:
        """The pipe closed, or a request of a reusable child ended: a last line without a newline is still a line."""
        if self.partial:
            self._emit(self.partial, sink, time.time())
            self.partial = b""

    def _emit(self, line: bytes, sink: LogBuffer | None, when: float) -> None:
        if sink is not None:
            sink.add(self.severity, self.stream, line.rstrip(b"\r").decode("utf-8", "replace"), when)


def read_available(fd: int) -> bytes | None:
    """What a non-blocking pipe holds now: b"" once it is closed, None if nothing is there yet."""
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
