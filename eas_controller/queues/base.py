"""What every queue implementation provides."""

from __future__ import annotations

from typing import Iterable

from sqlalchemy.engine import Connection


class Queue:
    """Carries queued attempts from the scheduler to workers.

    ``enqueue`` runs inside the scheduler's promotion transaction; ``flush`` runs after it commits (a
    broker publishes only what the database has recorded). ``claim`` hands a worker up to ``limit``
    attempts of the given task types, already marked running with a lease in SQL.
    """

    name = "base"

    def enqueue(self, connection: Connection, entries: list[dict]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Publish what ``enqueue`` collected, once the transaction that recorded it has committed."""

    def discard(self) -> None:
        """Forget what ``enqueue`` collected: the transaction that recorded it rolled back."""

    def claim(self, worker: dict, task_types: Iterable[str] | None, limit: int, lease_seconds: float) -> list[dict]:
        raise NotImplementedError

    def remove(self, connection: Connection, attempt_ids: list[int]) -> None:
        """Take attempts out of the queue (they are being cancelled or moved)."""
        raise NotImplementedError

    def close(self) -> None:
        pass
