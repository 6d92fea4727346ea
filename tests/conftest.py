"""Shared fixtures: the same tests run on SQLite, MariaDB/MySQL and PostgreSQL (and RabbitMQ where needed).

Service URLs come from ``EAS_TEST_MYSQL_URL``, ``EAS_TEST_POSTGRES_URL`` and ``EAS_TEST_AMQP_URL``,
defaulting to the loopback services. A service that cannot be reached is a skip with the reason, or a
failure when ``EAS_REQUIRE_SERVICES=1`` (as in CI). Where a Docker engine and the testcontainers package
are available and no URL is given, a container is started instead.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT_ROOT)

from eas_controller.config import Settings  # noqa: E402
from eas_controller.database import schema  # noqa: E402
from eas_controller.database.engine import make_engine, write_transaction  # noqa: E402
from eas_controller.database.manage import create_schema  # noqa: E402
from eas_controller.registry import read_registries, store_registry  # noqa: E402

DEFAULT_URLS = {
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/eas_test",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/eas_test",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/%2F",
}
URL_VARIABLES = {"mysql": "EAS_TEST_MYSQL_URL", "postgresql": "EAS_TEST_POSTGRES_URL", "amqp": "EAS_TEST_AMQP_URL"}
REQUIRE_SERVICES = os.environ.get("EAS_REQUIRE_SERVICES") == "1"
SQL_BACKENDS = ["sqlite", "mysql", "postgresql"]

_service_cache: dict[str, tuple[str | None, str | None]] = {}
_containers: list = []


def unavailable(reason: str):
    """Skip, or fail when services are required."""
    if REQUIRE_SERVICES:
        pytest.fail("required service unavailable: %s" % reason, pytrace=False)
    pytest.skip(reason)


def _ensure_database(url: str) -> None:
    from eas_controller.commands.init_schema import ensure_database_exists

    ensure_database_exists(url)


def _try_container(kind: str) -> str | None:
    """Start a container for ``kind`` when Docker and testcontainers are both available."""
    try:
        import docker  # noqa: F401
        import testcontainers  # noqa: F401
    except ImportError:
        return None
    try:
        if kind == "mysql":
            from testcontainers.mysql import MySqlContainer

            container = MySqlContainer("mariadb:10.11", username="root", password="test", dbname="eas_test").start()
            url = container.get_connection_url().replace("mysql://", "mysql+pymysql://")
        elif kind == "postgresql":
            from testcontainers.postgres import PostgresContainer

            container = PostgresContainer("postgres:15", dbname="eas_test", driver="psycopg").start()
            url = container.get_connection_url()
        else:
            from testcontainers.rabbitmq import RabbitMqContainer

            container = RabbitMqContainer("rabbitmq:3.12").start()
            url = "amqp://guest:guest@%s:%s/%%2F" % (container.get_container_host_ip(), container.get_exposed_port(5672))
    except Exception:
        return None
    _containers.append(container)
    return url


def service_url(kind: str) -> str:
    """The URL of a reachable service of ``kind`` (mysql, postgresql, amqp), or skip/fail."""
    if kind not in _service_cache:
        given = os.environ.get(URL_VARIABLES[kind])
        url = given or DEFAULT_URLS[kind]
        error = _probe(kind, url)
        if error and not given:
            container_url = _try_container(kind)
            if container_url:
                url, error = container_url, _probe(kind, container_url)
        _service_cache[kind] = (url if not error else None, error)
    url, error = _service_cache[kind]
    if url is None:
        unavailable("%s is not reachable (%s); set %s" % (kind, error, URL_VARIABLES[kind]))
    return url


def _probe(kind: str, url: str) -> str | None:
    try:
        if kind == "amqp":
            import pika

            parameters = pika.URLParameters(url)
            parameters.socket_timeout = 3
            parameters.connection_attempts = 1
            pika.BlockingConnection(parameters).close()
            return None
        _ensure_database(url)
        engine = make_engine(url)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as error:  # any failure means: not usable here
        return str(error).splitlines()[0][:200]


def database_url(backend: str, tmp_path) -> str:
    if backend == "sqlite":
        return "sqlite:///" + str(tmp_path / "eas.sqlite")
    return service_url(backend)


def clean_database(engine) -> None:
    """Empty every EAS table (faster than dropping and recreating the schema for each test)."""
    existing = set(sa.inspect(engine).get_table_names())
    names = [table.name for table in schema.metadata_obj.sorted_tables
             if table.name in existing and table is not schema.schema_info]
    with write_transaction(engine) as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("TRUNCATE %s RESTART IDENTITY CASCADE" % ", ".join(names))
            return
        if engine.dialect.name in ("mysql", "mariadb"):
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
        for name in reversed(names):
            connection.exec_driver_sql("DELETE FROM %s" % name)
        if engine.dialect.name in ("mysql", "mariadb"):
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")


@dataclasses.dataclass
class Environment:
    """A ready database and data directory, plus the environment a subprocess needs to use them."""

    backend: str
    settings: Settings
    engine: sa.engine.Engine
    tmp_path: object

    @property
    def env(self) -> dict:
        environment = dict(os.environ)
        for variable in ("EAS_QUEUE", "EAS_AMQP_URL", "EAS_AMQP_QUEUE_PREFIX", "EAS_LEASE_SECONDS", "EAS_MAX_ATTEMPTS",
                         "EAS_MAX_LOST_ATTEMPTS",
                         "EAS_RETRY_BACKOFF_SECONDS"):
            environment.pop(variable, None)
        environment.update(EAS_DB_URL=self.settings.database_url, EAS_DATA_DIR=self.settings.data_dir,
                           EAS_CONFIG=self.settings.settings_path, EAS_QUEUE=self.settings.queue,
                           EAS_LEASE_SECONDS=str(self.settings.lease_seconds),
                           EAS_MAX_ATTEMPTS=str(self.settings.max_attempts),
                           EAS_MAX_LOST_ATTEMPTS=str(self.settings.max_lost_attempts),
                           EAS_RETRY_BACKOFF_SECONDS=str(self.settings.retry_backoff_s),
                           EAS_AMQP_URL=self.settings.amqp_url, EAS_AMQP_QUEUE_PREFIX=self.settings.amqp_queue_prefix,
                           PYTHONUNBUFFERED="1")
        return environment

    def script(self, relative_path: str, *args: str, check: bool = True, timeout: float = 300,
               input: str | None = None) -> subprocess.CompletedProcess:
        """Run one of the project's scripts as a user would (``./script.py`` from its own folder)."""
        path = os.path.join(PROJECT_ROOT, "eas_controller", relative_path)
        result = subprocess.run([path, *args], cwd=os.path.dirname(path), env=self.env, capture_output=True,
                                text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError("%s %s exited %d\nstdout:\n%s\nstderr:\n%s" % (
                relative_path, " ".join(args), result.returncode, result.stdout, result.stderr))
        return result

    def start_worker(self, *args: str, log_name: str = "worker") -> subprocess.Popen:
        """Start a real worker process (``python -m eas_controller worker``)."""
        log_path = os.path.join(str(self.tmp_path), "%s-%d.log" % (log_name, time.time_ns()))
        with open(log_path, "w") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "eas_controller", "worker", *args], cwd=PROJECT_ROOT,
                                       env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        process.log_path = log_path
        return process


def make_environment(backend: str, tmp_path, queue: str = "sql", url: str | None = None,
                     **settings_values) -> Environment:
    """``url``: a database of ``backend`` to use instead of the shared service (e.g. a private server)."""
    url = url or database_url(backend, tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    settings_values.setdefault("amqp_queue_prefix", "eas_test_%s." % os.urandom(5).hex())  # never shared
    settings = Settings(data_dir=str(data_dir), db_url=url, queue=queue,
                        settings_path=str(tmp_path / "settings.yaml"), **settings_values)
    if queue == "amqp":
        settings.amqp_url = service_url("amqp")
    engine = make_engine(url)
    create_schema(engine)
    clean_database(engine)
    with write_transaction(engine) as connection:
        store_registry(connection, read_registries([os.path.join(PROJECT_ROOT, "tests", "task_types_test.yaml")]))
    return Environment(backend, settings, engine, tmp_path)


@pytest.fixture(params=SQL_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def eas(backend, tmp_path):
    """A clean EAS database on each SQL back end, with the shipped and test task types loaded."""
    environment = make_environment(backend, tmp_path)
    yield environment
    environment.engine.dispose()


@pytest.fixture
def eas_sqlite(tmp_path):
    environment = make_environment("sqlite", tmp_path)
    yield environment
    environment.engine.dispose()


@pytest.fixture
def eas_mysql(tmp_path):
    environment = make_environment("mysql", tmp_path)
    yield environment
    environment.engine.dispose()


def pytest_sessionfinish(session, exitstatus):
    for container in _containers:
        try:
            container.stop()
        except Exception:
            pass
