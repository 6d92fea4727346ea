"""What no live worker can offer: ready or queued tasks whose resources exceed every live worker's.

A read over the workers, tasks and task-types tables, for the scheduler daemon's warning and diagnostics.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.schema import task_types as task_types_table
from eas_controller.database.schema import tasks, workers

#: A worker counts as live if its row was updated this recently (heartbeats come every lease/3 seconds).
LIVE_WINDOW_S = 120.0
RESOURCES = ("cpu", "gpu", "memory_gb")


def unmet_needs(connection: Connection, now: float | None = None, live_window_s: float = LIVE_WINDOW_S) -> dict[str, dict]:
    """Ready or queued tasks that no live worker could ever run for lack of resources.

    Returns {task type: {"tasks": n, "short": ["gpu", ...]}}; empty when nothing is stuck or no worker is
    live (then nothing can be said about what the workers offer).
    """
    now = time.time() if now is None else now
    live = connection.execute(sa.select(workers.c.cpus, workers.c.gpus, workers.c.memory_gb).where(
        workers.c.state != "stopped", workers.c.last_seen >= now - live_window_s)).all()
    if not live:
        return {}
    counts = dict(connection.execute(sa.select(tasks.c.task_type, sa.func.count()).where(
        tasks.c.state.in_([states.READY, states.QUEUED]), tasks.c.is_control.is_(False)).group_by(tasks.c.task_type)).all())
    if not counts:
        return {}
    offers = [dict(cpu=row.cpus, gpu=row.gpus, memory_gb=row.memory_gb) for row in live]
    result = {}
    for row in connection.execute(sa.select(task_types_table.c.name, task_types_table.c.cpu, task_types_table.c.gpu,
                                            task_types_table.c.memory_gb).where(task_types_table.c.name.in_(list(counts)))):
        needs = dict(cpu=row.cpu or 0, gpu=row.gpu or 0, memory_gb=row.memory_gb or 0)
        if any(all(needs[key] <= offer[key] + 1e-9 for key in RESOURCES) for offer in offers):
            continue
        short = [key for key in RESOURCES if needs[key] > max(offer[key] for offer in offers) + 1e-9]
        result[row.name] = dict(tasks=counts[row.name], short=short or [key for key in RESOURCES if needs[key] > 0])
    return result


def describe_unmet(unmet: dict[str, dict]) -> str:
    """E.g. ``3 queued tasks need resources no live worker offers: gpu (fit_psf)``; empty if nothing."""
    if not unmet:
        return ""
    total = sum(item["tasks"] for item in unmet.values())
    short = sorted({key for item in unmet.values() for key in item["short"]})
    return "%d queued task%s resources no live worker offers: %s (%s)" % (
        total, " needs" if total == 1 else "s need", "+".join(short), ", ".join(sorted(unmet)))
