"""What every queue implementation provides."""

from __future__ import annotations

from typing import Iterable

from sqlalchemy.engine import Connection


class Queue:
    """Carries queued attempts from the scheduler to workers.

    ``enqueue`` runs inside the scheduler's promotion transaction; ``flush`` runs after it commits (a
    broker publishes only what the database has recorded). ``claim`` hands a worker up to ``limit``
    attempts of the given task types, already marked running with a lease in SQL. Whatever the carrier
    holds, the attempt's state in SQL decides: claiming is conditional on the attempt still being queued,
    so a duplicate or stale entry is dropped, never run twice.
    """

    name = "base"
    #: Entries are rows of the controller's database, written by ``enqueue`` in the caller's transaction and
    #: visible when it commits; a worker's completion may then queue the tasks it made ready (see
    #: ``worker.completion.record_outcomes``). A broker needs a publish after the commit, left to the scheduler.
    in_database = False

    def enqueue(self, connection: Connection, entries: list[dict]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Publish what ``enqueue`` collected, once the transaction that recorded it has committed."""

    def discard(self) -> None:
        """Forget what ``enqueue`` collected: the transaction that recorded it rolled back."""

    def claim(self, worker: dict, task_types: Iterable[str] | None, limit: int, lease_seconds: float,
              wait: bool = True) -> list[dict]:
        """``wait=False``: the caller has other work at hand (attempts claimed ahead): a carrier that waits
        briefly for news of queued attempts returns at once instead."""
        raise NotImplementedError

    def remove(self, connection: Connection, attempt_ids: list[int]) -> None:
        """Take attempts out of the queue (they are being cancelled or moved)."""
        raise NotImplementedError

    def repair(self) -> int:
        """Called by the scheduler each pass: re-send what the carrier never confirmed. Returns how many."""
        return 0

    def carried(self, task_types: Iterable[str]) -> dict[str, dict]:
        """Per task type, what the carrier holds now: ``{"in_queue": n, "consumers": n or None}``."""
        raise NotImplementedError

    def resync(self, task_types: Iterable[str], condition, min_age: float = 0.0, dry_run: bool = False) -> dict:
        """Make the carrier hold exactly the attempts SQL says are queued on it (a recovery operation).

        ``condition`` (a SQL expression over attempts and tasks, or True) limits which queued attempts
        are put back; attempts younger than ``min_age`` seconds are left alone (they may be in flight).
        Returns ``{"messages": seen, "dropped": stale entries removed, "missing": [attempt ids],
        "republished": n}``.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass
