"""What every benchmark shares: finding the services, databases of its own, process fan-out and results.

Benchmarks use their own databases (``eas_bench`` on MariaDB and PostgreSQL, a file under a temporary
folder for SQLite) so a run never touches the test databases or anyone's work. Each measurement is one
:class:`Result`; ``run_all.py`` prints them as one table and writes them as JSON.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from typing import Any, Callable

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(PROJECT_ROOT, ".venv", "bin", "python")
RESULTS_DIR = os.path.join(PROJECT_ROOT, "bench", "results")

#: modules a benchmark run needs; missing ones mean "not the project's environment"
NEEDED_MODULES = ("sqlalchemy", "yaml", "tabulate", "pymysql", "psycopg", "pika", "psutil")

BACKENDS = ("mariadb", "postgresql", "sqlite")
BACKEND_LABELS = {"mariadb": "MariaDB", "postgresql": "PostgreSQL", "sqlite": "SQLite", "amqp": "RabbitMQ",
                  "redis": "Redis"}


def use_project_environment() -> None:
    """Re-exec under ``.venv/bin/python`` (made by ``setup.sh``) when this interpreter lacks the dependencies."""
    if all(importlib.util.find_spec(name) is not None for name in NEEDED_MODULES):
        if PROJECT_ROOT not in sys.path:
            sys.path.insert(0, PROJECT_ROOT)
        return
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(PROJECT_ROOT, ".venv"))
    if os.path.exists(VENV_PYTHON) and not in_venv:
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(sys.argv[0])] + sys.argv[1:])
    sys.stderr.write("The project's dependencies are not installed. Run %s first.\n"
                     % os.path.join(PROJECT_ROOT, "setup.sh"))
    sys.exit(2)


# -- services -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Services:
    """Where the benchmarks find their servers; database names are the benchmarks' own."""

    mysql_url: str = "mysql://root@127.0.0.1:3306/eas_bench"  # the controller picks mysqlclient when it imports
    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/eas_bench"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    redis_url: str = "redis://127.0.0.1:6379/0"
    work_dir: str = ""  # SQLite files, data directories, logs
    amqp_prefix: str = ""  # RabbitMQ queue names of this run: prefix + task type

    @classmethod
    def from_environment(cls, database_suffix: str = "") -> "Services":
        """URLs from ``EAS_BENCH_*`` variables, else the loopback services with ``eas_bench<suffix>`` databases."""
        services = cls()
        if database_suffix:
            services.mysql_url += database_suffix
            services.postgres_url += database_suffix
        services.mysql_url = os.environ.get("EAS_BENCH_MYSQL_URL", services.mysql_url)
        services.postgres_url = os.environ.get("EAS_BENCH_POSTGRES_URL", services.postgres_url)
        services.amqp_url = os.environ.get("EAS_BENCH_AMQP_URL", services.amqp_url)
        services.redis_url = os.environ.get("EAS_BENCH_REDIS_URL", services.redis_url)
        services.work_dir = tempfile.mkdtemp(prefix="eas_bench_")
        services.amqp_prefix = "eas_bench_%s." % uuid.uuid4().hex[:10]
        return services

    def settings(self, url: str, queue: str = "sql"):
        """Controller settings for ``url`` and ``queue``, with this run's own RabbitMQ queue names."""
        from eas_controller.config import Settings

        settings = Settings(db_url=url, queue=queue, amqp_url=self.amqp_url, data_dir=self.work_dir)
        if hasattr(settings, "amqp_queue_prefix"):
            settings.amqp_queue_prefix = self.amqp_prefix
        return settings

    def sqlalchemy_url(self, backend: str, name: str = "eas") -> str:
        if backend == "mariadb":
            return self.mysql_url
        if backend == "postgresql":
            return self.postgres_url
        if backend == "sqlite":
            return "sqlite:///" + os.path.join(self.work_dir, "%s.sqlite" % name)
        raise ValueError("unknown backend %r" % backend)


def unavailable_reason(services: Services, backend: str) -> str | None:
    """None when ``backend`` (a SQL back end, amqp or redis) answers; else why not."""
    try:
        if backend == "amqp":
            import pika

            parameters = pika.URLParameters(services.amqp_url)
            parameters.socket_timeout = 3
            parameters.connection_attempts = 1
            pika.BlockingConnection(parameters).close()
        elif backend == "redis":
            parsed = urllib.parse.urlparse(services.redis_url)
            with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=3) as s:
                s.sendall(b"PING\r\n")
                if not s.recv(16).startswith(b"+PONG"):
                    return "Redis did not answer PING"
        elif backend != "sqlite":
            ensure_database(services.sqlalchemy_url(backend))
            connection = dbapi_connect(services.sqlalchemy_url(backend))
            connection.close()
    except Exception as error:  # anything at all means: not usable for this run
        return "%s: %s" % (error.__class__.__name__, str(error).splitlines()[0][:160] if str(error) else "")
    return None


def delete_amqp_queues(amqp_url: str, prefix: str, task_types=None) -> None:
    """Delete the RabbitMQ queues a run made (its prefix + each registered task type)."""
    if not prefix:
        return
    try:
        import pika

        from eas_controller.registry import read_registries

        names = task_types or list(read_registries([]))
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        for name in names:
            channel = connection.channel()
            try:
                channel.queue_delete(prefix + name)
            except Exception:  # never declared: nothing to delete
                pass
        if connection.is_open:
            connection.close()
    except Exception:
        pass


def ensure_database(url: str) -> None:
    from eas_controller.commands.init_schema import ensure_database_exists

    ensure_database_exists(url)


def fresh_schema(url: str):
    """An empty EAS schema (database created if missing, tables dropped and recreated) with the shipped task
    types; returns an engine."""
    from eas_controller.database.engine import make_engine, write_transaction
    from eas_controller.database.manage import create_schema, drop_schema
    from eas_controller.registry import read_registries, store_registry

    ensure_database(url)
    engine = make_engine(url)
    drop_schema(engine)
    create_schema(engine)
    with write_transaction(engine) as connection:
        store_registry(connection, read_registries([]))
    return engine


def dbapi_connect(url: str):
    """A raw DB-API connection (pymysql, psycopg, sqlite3) for ``url``: no SQLAlchemy in the way."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("mysql", "mariadb"):
        import pymysql

        connection = pymysql.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 3306,
                                     user=parsed.username or "root", password=parsed.password or "",
                                     database=parsed.database, autocommit=False, charset="utf8mb4")
        with connection.cursor() as cursor:  # as the controller runs its queue transactions
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return connection
    if backend == "postgresql":
        import psycopg

        return psycopg.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 5432,
                               user=parsed.username or "postgres", password=parsed.password or None,
                               dbname=parsed.database, autocommit=False)
    if backend == "sqlite":
        import sqlite3

        connection = sqlite3.connect(parsed.database, timeout=60, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=60000"):  # as the controller
            connection.execute("PRAGMA " + pragma)
        return connection
    raise ValueError("unsupported database %r" % backend)


def backend_of(url: str) -> str:
    import sqlalchemy as sa

    name = sa.engine.make_url(url).get_backend_name()
    return "mariadb" if name in ("mysql", "mariadb") else name


# -- results --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """One measured number, with what it was measured on."""

    group: str  # limits | seed | ours | end_to_end | peers | scale | ...
    name: str  # what was measured, e.g. "claim+complete (FOR UPDATE SKIP LOCKED)"
    backend: str  # mariadb | postgresql | sqlite | amqp | redis | ...
    value: float | None
    unit: str
    processes: int | None = None
    jobs: int | None = None
    duplicates: int | None = None
    note: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def skipped(cls, group: str, name: str, backend: str, reason: str, unit: str = "", **fields) -> "Result":
        return cls(group=group, name=name, backend=backend, value=None, unit=unit, note="skipped: " + reason, **fields)


def is_well_formed(result: dict) -> bool:
    """What the smoke test checks of every result: the fields exist and a number is a real number."""
    required = {"group", "name", "backend", "value", "unit", "processes", "jobs", "duplicates", "note", "extra"}
    if set(result) != required or not result["group"] or not result["name"]:
        return False
    value = result["value"]
    if value is None:
        return result["note"].startswith("skipped") or result["note"].startswith("failed")
    return isinstance(value, (int, float)) and value == value and value >= 0


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def duplicate_count(claims: list[tuple[int, Any]]) -> int:
    """Claims of a job beyond its first: every (job id, claimer) pair recorded in a run, checked after it."""
    return len(claims) - len({job_id for job_id, _claimer in claims})


# -- processes ------------------------------------------------------------------------------------------------

def _child(function: Callable, args: tuple, barrier, results) -> None:
    try:
        barrier.wait(120)
        started = time.perf_counter()
        value = function(*args)
        results.put(("ok", started, time.perf_counter(), value))
    except BaseException:  # report it to the parent rather than dying silently
        results.put(("error", 0.0, 0.0, traceback.format_exc()))


def run_processes(function: Callable, args_per_process: list[tuple], timeout: float = 3600) -> tuple[float, list]:
    """Run ``function(*args)`` in one forked process per entry, all starting together.

    Returns (seconds from the first start to the last finish, [each process's return value]). Each
    process opens its own connections: nothing is shared across the fork.
    """
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(args_per_process) + 1)
    results = context.Queue()
    processes = [context.Process(target=_child, args=(function, args, barrier, results), daemon=True)
                 for args in args_per_process]
    for process in processes:
        process.start()
    barrier.wait(120)
    outcomes = []
    deadline = time.time() + timeout
    try:
        for _ in processes:
            outcomes.append(results.get(timeout=max(1.0, deadline - time.time())))
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    errors = [value for status, _s, _e, value in outcomes if status == "error"]
    if errors:
        raise RuntimeError("a benchmark process failed:\n" + errors[0])
    elapsed = max(end for _st, _s, end, _v in outcomes) - min(start for _st, start, _e, _v in outcomes)
    return elapsed, [value for _st, _s, _e, value in outcomes]


def machine_facts() -> dict:
    """Cores, memory, OS and the versions of what was measured, for the write-up."""
    import platform

    import psutil

    facts = dict(cores=os.cpu_count(), memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
                 cpu=_cpu_model(), os=platform.platform(), python=platform.python_version())
    for module in ("sqlalchemy", "pymysql", "psycopg", "pika", "redis", "rq", "celery"):
        try:
            facts[module] = __import__(module).__version__
        except Exception:
            facts[module] = None
    return facts


def server_versions(services: Services) -> dict:
    versions = {}
    for backend in ("mariadb", "postgresql"):
        try:
            connection = dbapi_connect(services.sqlalchemy_url(backend))
            with connection.cursor() as cursor:
                cursor.execute("SELECT version()")
                versions[backend] = str(cursor.fetchone()[0]).split(" on ")[0]
            connection.close()
        except Exception:
            versions[backend] = None
    import sqlite3

    versions["sqlite"] = sqlite3.sqlite_version
    try:
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(services.amqp_url))
        properties = connection._impl.server_properties
        versions["rabbitmq"] = properties.get("version", b"").decode() if isinstance(
            properties.get("version"), bytes) else properties.get("version")
        connection.close()
    except Exception:
        versions["rabbitmq"] = None
    try:
        import redis

        versions["redis"] = redis.Redis.from_url(services.redis_url).info("server").get("redis_version")
    except Exception:
        versions["redis"] = None
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def print_results(results: list[Result]) -> None:
    from tabulate import tabulate

    rows = [(r.group, r.name, BACKEND_LABELS.get(r.backend, r.backend), r.processes or "",
             "-" if r.value is None else format_value(r.value), r.unit, "" if r.duplicates is None else r.duplicates,
             r.note) for r in results]
    print(tabulate(rows, headers=("group", "measurement", "backend", "procs", "value", "unit", "dup", "note")))


def report(results: list[Result], json_path: str | None = None) -> int:
    """A benchmark script's ending: print the table, write the JSON file if asked; exit status 1 if a
    measurement is missing (skipped or failed), else 0."""
    import json

    print_results(results)
    if json_path:
        with open(json_path, "w") as handle:
            json.dump([result.to_dict() for result in results], handle, indent=1, default=str)
    return 0 if all(result.value is not None for result in results) else 1


def format_value(value: float) -> str:
    if value >= 100:
        return "{:,.0f}".format(value)
    if value >= 10:
        return "%.1f" % value
    return "%.3g" % value
