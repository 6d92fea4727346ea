"""Connections and transactions, with every dialect difference kept here.

- SQLite: WAL journal, foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE`` so two
  writers queue up at the start instead of failing half way (SQLite has no ``SKIP LOCKED``).
- MariaDB/MySQL: READ COMMITTED, because under REPEATABLE READ gap locks plus concurrent inserts deadlock
  queue transactions; servers too old for ``SKIP LOCKED`` are refused.
- PostgreSQL: READ COMMITTED is already the default.
Deadlocks and lock timeouts are retried by :func:`run_transaction`, lost connections too. ``mysql://`` URLs
without a driver use mysqlclient when it imports (C), else PyMySQL: see :func:`mysql_driver`.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from eas_controller.backoff import exponential_delay

#: The dialect names of MySQL and MariaDB (SQLAlchemy names a ``mariadb+pymysql://`` URL's dialect
#: ``mariadb``): one family, treated alike.
MYSQL_FAMILY = ("mysql", "mariadb")

T = TypeVar("T")


class DatabaseError(RuntimeError):
    """The database cannot be used as asked (unsupported server, missing schema...)."""


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for ``url`` configured for queue-style short transactions on its dialect."""
    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            import os

            os.makedirs(os.path.dirname(os.path.abspath(database)) or ".", exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    if backend in MYSQL_FAMILY:
        if parsed.drivername in MYSQL_FAMILY:
            parsed = parsed.set(drivername=backend + "+" + mysql_driver())
        query = dict(parsed.query)
        query.setdefault("charset", "utf8mb4")
        parsed = parsed.set(query=query)
        return sa.create_engine(
            parsed, isolation_level="READ COMMITTED", pool_pre_ping=True, pool_recycle=3600, pool_size=pool_size
        )
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, isolation_level="READ COMMITTED", pool_pre_ping=True, pool_size=pool_size)
    raise DatabaseError("unsupported database %r: use sqlite, mysql/mariadb or postgresql URLs" % backend)


_mysql_driver: str | None = None


def mysql_driver() -> str:
    """The driver a ``mysql://`` or ``mariadb://`` URL without one gets: ``mysqldb`` (mysqlclient, in C: about 40%
    less client CPU per statement) when it can be imported, else ``pymysql``. A URL naming its driver keeps it."""
    global _mysql_driver
    if _mysql_driver is None:
        try:
            import MySQLdb  # noqa: F401  (mysqlclient)

            _mysql_driver = "mysqldb"
        except ImportError:
            _mysql_driver = "pymysql"
        logging.getLogger("eas.database").debug("MySQL/MariaDB URLs without a driver use %s", _mysql_driver)
    return _mysql_driver


#: Values per ``IN (...)`` list: well under SQLite's limit on bound parameters, short enough for any server.
IN_LIST_SIZE = 500


def chunks(values: list, size: int = IN_LIST_SIZE) -> Iterator[list]:
    """``values`` in slices of at most ``size``: one statement per slice."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql("BEGIN " + mode)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
    with engine.connect() as connection:
        if is_sqlite(engine):
            connection = connection.execution_options(sqlite_begin="IMMEDIATE")
        with connection.begin():
            yield connection


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        with connection.begin():
            yield connection


# Error codes of a database out of reach, and of a transaction worth trying again whole.
# gone away, lost, cannot connect (socket, TCP: MariaDB Connector/C says 2002 for both), refused,
# disconnected for inactivity
_MYSQL_CONNECTION_CODES = {2006, 2013, 2002, 2003, 4031}
_MYSQL_CONFLICT_CODES = {1205, 1213}  # lock wait timeout, deadlock
_POSTGRES_CONNECTION_STATES = {"57P01", "08006", "08001", "08003"}
_POSTGRES_CONFLICT_STATES = {"40001", "40P01", "55P03"}


def _error_code(error: BaseException):
    """(MySQL error number or None, PostgreSQL SQLSTATE or None, the driver's exception or None)."""
    original = getattr(error, "orig", None)
    args = getattr(original, "args", ()) if original is not None else ()
    number = args[0] if args and isinstance(args[0], int) else None
    sqlstate = (getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)) if original is not None else None
    return number, sqlstate, original


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` means the database could not be reached (as opposed to a deadlock or a lock wait)."""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    number, sqlstate, original = _error_code(error)
    if original is None:
        return False
    if number is not None:
        return number in _MYSQL_CONNECTION_CODES
    return sqlstate in _POSTGRES_CONNECTION_STATES or "connect" in str(original).lower()


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is a deadlock, lock timeout, busy database or lost connection."""
    if is_connection_error(error):
        return True
    number, sqlstate, original = _error_code(error)
    if original is None:
        return False
    if original.__class__.__module__.startswith("sqlite3"):
        return "locked" in str(original) or "busy" in str(original)
    return number in _MYSQL_CONFLICT_CODES or sqlstate in _POSTGRES_CONFLICT_STATES


def run_transaction(
    engine: Engine,
    body: Callable[[Connection], T],
    attempts: int = 8,
    max_delay: float = 5.0,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run ``body(connection)`` in a write transaction, retrying deadlocks and lost connections with backoff.

    ``attempts=0`` retries for ever (a worker riding out a database restart).
    """
    tried = 0
    while True:
        try:
            with write_transaction(engine) as connection:
                return body(connection)
        except sa.exc.DBAPIError as error:
            tried += 1
            if not is_retryable(error) or (attempts and tried >= attempts):
                raise
            delay = exponential_delay(tried, 0.02, max_delay, jitter=1.0)
            if on_retry:
                on_retry(error, delay)
            elif delay >= 1.0:  # not a passing deadlock: say so
                logging.getLogger("eas.database").warning(
                    "database unavailable (%s); retrying in %.1f s", str(error.orig).splitlines()[0][:200], delay)
            time.sleep(delay)


def version_refusal(dialect_name: str, version) -> str | None:
    """Why a server of this version cannot run EAS Controller (no ``SKIP LOCKED``), or None when it can.

    ``version`` is the text of ``SELECT VERSION()`` on MariaDB/MySQL, a tuple of numbers on PostgreSQL.
    A MySQL/MariaDB version that cannot be read is let through: the server knows better than our parser.
    """
    if dialect_name in MYSQL_FAMILY:
        text = str(version or "").strip()
        # Old MariaDB clients saw "5.5.5-10.x.y-MariaDB" (a replication-protocol prefix), not the real version.
        release = text[len("5.5.5-"):] if text.startswith("5.5.5-") and "mariadb" in text.lower() else text
        match = re.match(r"(\d+)\.(\d+)", release)
        if not match:
            return None
        numbers = (int(match.group(1)), int(match.group(2)))
        if "mariadb" in text.lower():
            if numbers < (10, 6):
                return "MariaDB %s is too old: EAS Controller needs MariaDB >= 10.6 (SELECT ... SKIP LOCKED)" % text
        elif numbers < (8, 0):
            return "MySQL %s is too old: EAS Controller needs MySQL >= 8.0 (SELECT ... SKIP LOCKED)" % text
        return None
    if dialect_name == "postgresql" and version and tuple(version) < (9, 5):
        return "PostgreSQL %s is too old: 9.5 or newer is needed (SELECT ... SKIP LOCKED)" % ".".join(map(str, version))
    return None


def check_server_version(engine: Engine) -> None:
    """Refuse servers that lack ``SELECT ... FOR UPDATE SKIP LOCKED``."""
    if engine.dialect.name in MYSQL_FAMILY:
        with engine.connect() as connection:
            version = connection.exec_driver_sql("SELECT VERSION()").scalar()
    elif engine.dialect.name == "postgresql":
        with engine.connect():  # server_version_info is known once connected
            version = engine.dialect.server_version_info
    else:
        return
    refusal = version_refusal(engine.dialect.name, version)
    if refusal:
        raise DatabaseError(refusal)
