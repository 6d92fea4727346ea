"""Progress: per task type, how many tasks are in each state and what share is finished; and over time.

The counts read ``ix_eas_tasks_job`` per selected job. Without a job selection they group the whole table,
which is what a user who asks for every job wants; the web console always selects a job.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.schema import attempts, tasks
from eas_controller.views.jobs import of_selected_jobs

PROGRESS_COLUMNS = ["task_type"] + list(states.TASK_STATES) + ["total", "percent_done"]


def progress_summary(connection: Connection, job_name: str | None = None, job_id: int | None = None,
                     include_control: bool = False) -> list[dict]:
    """Per task type (worker tasks only, unless ``include_control``): tasks in each state, the total and
    the percentage done. A last row ``(all)`` sums them."""
    query = (sa.select(tasks.c.task_type, tasks.c.state, sa.func.count().label("n"))
             .group_by(tasks.c.task_type, tasks.c.state))
    query = of_selected_jobs(connection, query, job_name, job_id)
    if not include_control:
        query = query.where(tasks.c.is_control.is_(False))
    counts: dict[str, dict] = {}
    for row in connection.execute(query):
        counts.setdefault(row.task_type, {state: 0 for state in states.TASK_STATES})[row.state] = row.n
    rows = [_row(name, values) for name, values in sorted(counts.items())]
    if len(rows) > 1:
        rows.append(_row("(all)", {state: sum(row[state] for row in rows) for state in states.TASK_STATES}))
    return rows


def _row(task_type: str, values: dict) -> dict:
    total = sum(values.values())
    return dict(task_type=task_type, **values, total=total,
                percent_done=round(100.0 * values.get(states.DONE, 0) / total, 1) if total else 0.0)


def bar(fraction: float, width: int = 30) -> str:
    """A text progress bar, e.g. ``[#########.....]``."""
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class RateTracker:
    """Completion rate from successive snapshots of the finished count (no query over the history):
    finished tasks per second over the last ``window_s``, and the time left at that rate."""

    def __init__(self, window_s: float = 120.0) -> None:
        self.window_s = window_s
        self.samples: list[tuple[float, int]] = []

    def add(self, now: float, finished: int) -> None:
        self.samples.append((now, finished))
        while len(self.samples) > 2 and self.samples[1][0] < now - self.window_s:
            self.samples.pop(0)

    def rate(self) -> float | None:
        if len(self.samples) < 2 or self.samples[-1][0] <= self.samples[0][0]:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0)

    def eta_s(self, remaining: int) -> float | None:
        rate = self.rate()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate else None


def completions_over_time(connection: Connection, job_id: int, buckets: int = 60) -> dict:
    """For the progress chart: attempts of a job that ended, per time bucket, split by outcome."""
    rows = connection.execute(sa.select(attempts.c.ended_at, attempts.c.state).join(tasks, tasks.c.id == attempts.c.task_id)
                              .where(tasks.c.job_id == job_id, attempts.c.ended_at.is_not(None))).all()
    if not rows:
        return dict(start=None, end=None, bucket_s=0, succeeded=[], failed=[])
    start = min(row.ended_at for row in rows)
    end = max(row.ended_at for row in rows)
    width = max((end - start) / buckets, 1e-6)
    succeeded, failed = [0] * buckets, [0] * buckets
    for row in rows:
        index = min(buckets - 1, int((row.ended_at - start) / width))
        (succeeded if row.state == states.A_SUCCEEDED else failed)[index] += 1
    return dict(start=start, end=end, bucket_s=width, succeeded=succeeded, failed=failed)
