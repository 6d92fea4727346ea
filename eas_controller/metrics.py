"""Prometheus metrics: what the scheduler and the workers expose for scraping (``--metrics-port``).

Two sources. What only a process knows — attempts it claimed, attempts it finished and how long they ran,
leases it found expired, database errors it met — is counted in the process through the small hook
functions below, which cost nothing until :func:`serve` has started the endpoint. What the database knows
— tasks by state and type, queue depth per type, attempts by state, workers and lost workers — is read at
scrape time by :class:`DatabaseCollector`, served by the scheduler only (every worker serving it would
repeat the same numbers and multiply the queries). Its queries are a handful of ``GROUP BY`` statements,
each result kept for ``cache_s`` seconds or 20 times what it cost if that is longer, so a busy database
with a large history spends a small share of its time on being watched.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from eas_controller import states
from eas_controller.database.engine import read_transaction
from eas_controller.database.schema import attempts, tasks, workers

#: Attempt durations span milliseconds (no-op tasks) to hours (transit searches).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
                    7200, 14400, 43200, float("inf"))

_lock = threading.Lock()
_metrics: dict | None = None  # the in-process counters, once serve() made them


# -- hooks: one line where the event happens ---------------------------------------------------------------
def claimed(count: int) -> None:
    """A claim transaction gave this worker ``count`` attempts."""
    if _metrics is not None and count and "claims" in _metrics:
        _metrics["claims"].inc()
        _metrics["claimed"].inc(count)


def attempt_finished(task_type: str, state: str, wall_s: float | None) -> None:
    """An attempt ended here: ``state`` is succeeded, failed, lost (taken away) or released (given back)."""
    if _metrics is not None and "finished" in _metrics:
        _metrics["finished"].labels(task_type, state).inc()
        if wall_s is not None:
            _metrics["duration"].labels(task_type, state).observe(wall_s)


def lease_expired(count: int = 1) -> None:
    """The scheduler found ``count`` running attempts whose lease had expired (their workers were lost)."""
    if _metrics is not None and count and "lease_expiries" in _metrics:
        _metrics["lease_expiries"].inc(count)


def scheduler_pass(result) -> None:
    """A scheduler pass ended (a ``scheduler.PassResult``): count what it did."""
    if _metrics is not None and "passes" in _metrics:
        _metrics["passes"].inc()
        for name in ("promoted", "expanded", "finished_control", "failed", "retried", "republished"):
            value = getattr(result, name, 0)
            if value:
                _metrics["scheduler"].labels(name).inc(value)
        lease_expired(getattr(result, "stalled", 0))


def database_error(kind: str = "error") -> None:
    """A statement failed (``kind``: ``disconnect`` for a lost connection, else ``error``)."""
    if _metrics is not None:
        _metrics["database_errors"].labels(kind).inc()


# -- the endpoint -------------------------------------------------------------------------------------------
def serve(port: int, address: str = "127.0.0.1", role: str = "worker", engine=None, database_counts: bool = False,
          lease_seconds: float = 60.0, cache_s: float = 5.0):
    """Start the HTTP endpoint (a daemon thread) and the counters; count ``engine``'s database errors;
    with ``database_counts``, also serve the database's view. Returns the HTTP server."""
    import prometheus_client

    registry = prometheus_client.REGISTRY
    _make_metrics(registry, role)
    if engine is not None:
        watch_engine(engine)
        if database_counts:
            registry.register(DatabaseCollector(engine, lease_seconds, cache_s))
    server, _thread = prometheus_client.start_http_server(port, address, registry=registry)
    return server


def _make_metrics(registry, role: str) -> None:
    """The counters of ``role`` (worker or scheduler); hooks of the other role stay no-ops."""
    global _metrics
    from prometheus_client import Counter, Histogram, Info, disable_created_metrics

    with _lock:
        if _metrics is not None:
            return
        disable_created_metrics()  # no *_created series: they double the output for nothing a dashboard uses
        Info("eas_process", "which EAS Controller role this process plays", registry=registry).info({"role": role})
        made = dict(database_errors=Counter(
            "eas_database_errors", "database statements and connection attempts that failed in this process "
            "(kind: disconnect = the connection was lost)", ["kind"], registry=registry))
        for kind in ("error", "disconnect"):
            made["database_errors"].labels(kind)
        if role == "worker":
            made.update(
                claims=Counter("eas_claim_transactions", "claim transactions that gave this worker attempts",
                               registry=registry),
                claimed=Counter("eas_attempts_claimed", "attempts claimed by this worker", registry=registry),
                finished=Counter("eas_attempts_finished", "attempts this worker finished, by task type and result",
                                 ["task_type", "state"], registry=registry),
                duration=Histogram("eas_attempt_duration_seconds", "wall-clock time of the attempts this worker ran",
                                   ["task_type", "state"], buckets=DURATION_BUCKETS, registry=registry),
            )
        else:
            made.update(
                lease_expiries=Counter("eas_lease_expiries", "running attempts the scheduler found with an expired "
                                       "lease (their worker was lost)", registry=registry),
                passes=Counter("eas_scheduler_passes", "scheduling passes run", registry=registry),
                scheduler=Counter("eas_scheduler_actions", "what the scheduler's passes did (promoted: attempts "
                                  "queued; retried: tasks given another attempt...)", ["action"], registry=registry),
            )
        _metrics = made


def watch_engine(engine) -> None:
    """Count every failed statement and connection attempt on ``engine`` (SQLAlchemy's ``handle_error``)."""
    if getattr(engine, "_eas_metrics_watched", False):
        return

    def on_error(context) -> None:
        database_error("disconnect" if context.is_disconnect else "error")

    sa.event.listen(engine, "handle_error", on_error)
    engine._eas_metrics_watched = True


class DatabaseCollector:
    """The database's view, read at scrape time. Each query's result is kept for ``cache_s`` seconds, or 20
    times what it cost if that is longer: the cheap counts (attempts by state, the queue, the workers) stay
    fresh while counting a large table of tasks is done less often."""

    def __init__(self, engine, lease_seconds: float = 60.0, cache_s: float = 5.0):
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, float, object]] = {}  # query -> (read at, cost in s, result)
        self._up = 0

    def describe(self):
        return []  # families depend on the data; registering must not query the database

    def counts(self) -> dict:
        """Each query's result, from the cache while it is fresh; the last one when the database fails."""
        with self._lock:
            up = 1
            for name, query in QUERIES.items():
                cached = self._cache.get(name)
                now = time.time()
                if cached is not None and now - cached[0] < max(self.cache_s, 20 * cached[1]):
                    continue
                started = time.perf_counter()
                try:
                    with read_transaction(self.engine) as connection:
                        value = query(connection, self.lease_seconds)
                except sa.exc.SQLAlchemyError:
                    up = 0
                    break
                self._cache[name] = (now, time.perf_counter() - started, value)
            self._up = up
            return {name: cached[2] for name, cached in self._cache.items()}

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        counts = self.counts()
        up = GaugeMetricFamily("eas_database_up", "1 when the last read of the database's counts worked")
        up.add_metric([], self._up)
        yield up
        age = GaugeMetricFamily("eas_database_counts_age_seconds", "how old each query's counts are", labels=["query"])
        cost = GaugeMetricFamily("eas_database_counts_query_seconds", "what each query cost when it last ran",
                                 labels=["query"])
        now = time.time()
        for name, (read_at, took, _value) in sorted(self._cache.items()):
            age.add_metric([name], max(0.0, now - read_at))
            cost.add_metric([name], took)
        yield age
        yield cost
        families = (
            ("eas_tasks", "tasks by state and task type", ["state", "task_type"], counts.get("tasks")),
            ("eas_attempts", "attempts by state (stalled: lease expired, its worker lost)", ["state"],
             counts.get("attempts")),
            ("eas_queue_depth", "attempts queued and not yet claimed, by task type and queue", ["task_type", "queue"],
             counts.get("queued")),
            ("eas_workers", "registered workers by the state they last reported", ["state"],
             (counts.get("workers") or {}).get("states")),
        )
        for name, help_text, labels, values in families:
            if values is None:
                continue
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for label_values, value in sorted(values.items()):
                family.add_metric(list(label_values), value)
            yield family
        if "workers" in counts:
            lost = GaugeMetricFamily("eas_workers_lost", "workers that say they run but sent no heartbeat for a "
                                     "lease period (killed, cut off or frozen)")
            lost.add_metric([], counts["workers"]["lost"])
            yield lost


# -- the queries (reads only); each returns {label values: count} ---------------------------------------------
def task_counts(connection, _lease_seconds) -> dict:
    """Every task, grouped: reads the whole table (about 0.2 s per 100,000 tasks on MariaDB, 0.14 s on
    PostgreSQL), which is still cheaper than reading the unfinished and the finished ones through the state
    index separately; the cost-based cache keeps it a small share of the database's time."""
    rows = connection.execute(sa.select(tasks.c.state, tasks.c.task_type, sa.func.count())
                              .group_by(tasks.c.state, tasks.c.task_type))
    return {(state, task_type): count for state, task_type, count in rows}


def attempt_states(connection, _lease_seconds) -> dict:
    """Served by the ``(state, lease_expires_at)`` index alone."""
    return {(state,): count for state, count in connection.execute(
        sa.select(attempts.c.state, sa.func.count()).group_by(attempts.c.state))}


def queued_attempts(connection, _lease_seconds) -> dict:
    return {(task_type, queue): count for task_type, queue, count in connection.execute(
        sa.select(attempts.c.task_type, attempts.c.queue, sa.func.count())
        .where(attempts.c.state == states.A_QUEUED).group_by(attempts.c.task_type, attempts.c.queue))}


def worker_states(connection, lease_seconds) -> dict:
    """Workers by state, and those whose row says they run but whose heartbeat stopped a lease ago."""
    by_state = {(state,): count for state, count in connection.execute(
        sa.select(workers.c.state, sa.func.count()).group_by(workers.c.state))}
    lost = connection.execute(sa.select(sa.func.count()).select_from(workers).where(
        workers.c.state.in_(["running", "stopping"]), workers.c.last_seen < time.time() - lease_seconds)).scalar()
    return dict(states=by_state, lost=lost or 0)


QUERIES = dict(tasks=task_counts, attempts=attempt_states,
               queued=queued_attempts, workers=worker_states)
