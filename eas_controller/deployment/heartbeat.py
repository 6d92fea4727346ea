"""Is a named worker alive? A read-only look at its heartbeat in ``eas_workers``, for liveness probes.

The worker renews ``last_seen`` every third of a lease while it runs, busy or idle. A pod whose worker has
not done so for ``max_age`` seconds is stuck and should be restarted; a database that cannot be reached is
not the worker's fault (it retries with backoff), so that case is reported as alive.
"""

from __future__ import annotations

import dataclasses
import time

import sqlalchemy as sa

from eas_controller.database.schema import workers


@dataclasses.dataclass
class Verdict:
    alive: bool
    reason: str


def newest_heartbeat(connection, name: str):
    """The newest registration of ``name`` (a restarted pod registers again under the same name)."""
    return connection.execute(
        sa.select(workers.c.id, workers.c.state, workers.c.last_seen, workers.c.started_at)
        .where(workers.c.name == name).order_by(workers.c.id.desc()).limit(1)).first()


def judge(engine, name: str, max_age_s: float, now: float | None = None) -> Verdict:
    now = time.time() if now is None else now
    try:
        with engine.connect() as connection:
            row = newest_heartbeat(connection, name)
    except sa.exc.DBAPIError as error:
        return Verdict(True, "database unreachable, not judged (%s)" % str(error.orig).splitlines()[0][:120])
    if row is None:
        return Verdict(False, "no worker named %s has registered" % name)
    age = now - row.last_seen
    if row.state == "stopped":
        return Verdict(False, "worker %s (id %d) has stopped" % (name, row.id))
    if age > max_age_s:
        return Verdict(False, "worker %s (id %d) last renewed its heartbeat %.0f s ago (limit %g s)"
                       % (name, row.id, age, max_age_s))
    return Verdict(True, "worker %s (id %d) renewed its heartbeat %.0f s ago" % (name, row.id, age))
