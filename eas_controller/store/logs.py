"""Log lines of attempts: the output of the task, the worker's own lines, and the controller's notes."""

from __future__ import annotations

import time

from sqlalchemy.engine import Connection

from eas_controller.database.schema import log_lines

#: A single message (a traceback) is kept whole up to this many bytes (a MySQL TEXT holds 65,535).
MAX_MESSAGE_BYTES = 60_000


def clip(text: str, limit_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` if it fits in ``limit_bytes`` of UTF-8, else its head and tail (a traceback's end matters most)."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit_bytes:
        return text
    keep = (limit_bytes - 100) // 2
    head = encoded[:keep].decode("utf-8", "ignore")
    tail = encoded[-keep:].decode("utf-8", "ignore")
    return "%s\n[... %d bytes cut ...]\n%s" % (head, len(encoded) - 2 * keep, tail)


def rows_for(attempt_id: int, task_id: int, lines: list) -> list[dict]:
    """Rows for (time, severity, stream, message) lines."""
    return [dict(attempt_id=attempt_id, task_id=task_id, created_at=when, severity=severity, stream=stream,
                 message=clip(message))
            for when, severity, stream, message in lines]


def insert_rows(connection: Connection, rows: list[dict]) -> None:
    if rows:
        connection.execute(log_lines.insert(), rows)


def write_lines(connection: Connection, attempt_id: int, task_id: int, lines: list) -> None:
    insert_rows(connection, rows_for(attempt_id, task_id, lines))


def write_note(connection: Connection, attempt_id: int, task_id: int, severity: str, message: str) -> None:
    """A line in an attempt's log written by the controller itself (stream ``system``)."""
    connection.execute(log_lines.insert().values(attempt_id=attempt_id, task_id=task_id, created_at=time.time(),
                                                 severity=severity, stream="system", message=clip(message)))
