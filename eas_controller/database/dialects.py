"""What the database back ends do differently, as named capabilities. Nothing outside ``database/`` asks
which back end it talks to; it asks whether a capability is there.

The back end is read from the dialect's name: ``mysql`` and ``mariadb`` (SQLAlchemy names a
``mariadb+pymysql://`` URL's dialect ``mariadb``) are one family and get the same treatment.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from eas_controller.database.engine import IN_LIST_SIZE, MYSQL_FAMILY, chunks
from eas_controller.database.many_rows import split_constants


def family(bind: Connection | Engine) -> str:
    """``sqlite``, ``mysql`` (MariaDB too) or ``postgresql``."""
    name = bind.dialect.name
    return "mysql" if name in MYSQL_FAMILY else name


class server_epoch(FunctionElement):
    """The database server's clock, in epoch seconds: leases are set and judged on it, so a worker or a
    scheduler whose own clock is off does not make a live worker look dead."""

    type = sa.Double()
    inherit_cache = True


@compiles(server_epoch, "sqlite")
def _sqlite_epoch(_element, _compiler, **_kw):
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(server_epoch, "mysql")
@compiles(server_epoch, "mariadb")
def _mysql_epoch(_element, _compiler, **_kw):
    return "UNIX_TIMESTAMP(NOW(6))"


@compiles(server_epoch, "postgresql")
def _postgresql_epoch(_element, _compiler, **_kw):
    return "EXTRACT(EPOCH FROM clock_timestamp())"


def supports_multi_row_case_update(bind: Connection | Engine) -> bool:
    """Whether one ``UPDATE ... SET col = CASE id WHEN ...`` beats an executemany: MySQL/MariaDB drivers send an
    executemany as one round trip per row; psycopg pipelines one, SQLite runs in process."""
    return family(bind) == "mysql"


def reserves_ids_from_sequence(bind: Connection | Engine) -> bool:
    """Whether new ids can be taken from the table's sequence in one round trip (PostgreSQL), so many rows go
    in with a plain executemany (several times faster there than an ordered ``INSERT ... RETURNING``)."""
    return family(bind) == "postgresql"


def returns_ids_in_order(bind: Connection | Engine) -> bool:
    """Whether a multi-row ``INSERT ... RETURNING`` gives the new ids in the order of the rows."""
    return bool(bind.dialect.insert_executemany_returning_sort_by_parameter_order)


def needs_explicit_snapshot(bind: Connection | Engine) -> bool:
    """Whether a consistent read of many tables needs REPEATABLE READ (servers that default to READ
    COMMITTED here); SQLite's WAL read transaction is already a snapshot."""
    return family(bind) in ("postgresql", "mysql")


def checks_foreign_keys_per_row(bind: Connection | Engine) -> bool:
    """Whether rows loaded with their original ids need foreign-key checks turned off for the session
    (MySQL/MariaDB check each row at once, so a self-referencing table cannot be filled in one statement)."""
    return family(bind) == "mysql"


def sequences_follow_explicit_ids(bind: Connection | Engine) -> bool:
    """Whether id sequences move past explicitly inserted ids by themselves (PostgreSQL's do not)."""
    return family(bind) != "postgresql"


def reserve_ids(connection: Connection, table: sa.Table, count: int) -> list[int]:
    """Take ``count`` new ids from ``table``'s id sequence in one round trip (see :func:`reserves_ids_from_sequence`)."""
    rows = connection.execute(
        sa.text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :count)"),
        dict(table=table.name, count=count),
    )
    return [row[0] for row in rows]


def insert_rows_returning_ids(connection: Connection, table: sa.Table, rows: list[dict]) -> list[int]:
    """Insert ``rows`` and return their new ids in order, in as few round trips as the back end allows."""
    if not rows:
        return []
    if reserves_ids_from_sequence(connection):
        reserved = reserve_ids(connection, table, len(rows))
        for start, chunk in zip(range(0, len(rows), IN_LIST_SIZE), chunks(rows)):
            connection.execute(table.insert(), [dict(row, id=new_id) for row, new_id in zip(chunk, reserved[start:])])
        return reserved
    if returns_ids_in_order(connection):
        ids = []
        for chunk in chunks(rows):
            constants, varying = split_constants(connection, table, chunk)
            if constants:
                # MySQL family only. SQLAlchemy sends an ordered RETURNING with literals one row at a time;
                # unordered it is one statement, and the auto-increment ids of one INSERT ascend in the
                # order of its rows
                result = connection.execute(table.insert().values(constants).returning(table.c.id), varying)
                ids.extend(sorted(row[0] for row in result))
                continue
            result = connection.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), chunk)
            ids.extend(row[0] for row in result)
        return ids
    return [connection.execute(table.insert().values(**row)).inserted_primary_key[0] for row in rows]


def insert_ignoring_duplicates(connection: Connection, table: sa.Table, rows: list[dict]) -> None:
    """Insert ``rows``, skipping those whose primary key is already there (a concurrent writer added it)."""
    if not rows:
        return
    name = family(connection)
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        statement = insert(table).on_conflict_do_nothing()
    elif name == "mysql":
        statement = table.insert().prefix_with("IGNORE")
    else:
        statement = table.insert().prefix_with("OR IGNORE")
    for chunk in chunks(rows):
        connection.execute(statement, chunk)


#: Per-table autovacuum settings of the tables whose rows turn over all the time (PostgreSQL). Every claim
#: deletes ``eas_sql_queue`` rows and every heartbeat rewrites a ``eas_workers`` row; as shipped, autovacuum
#: waits for 20% of a table to be dead, and the claim's index scan starts right where the dead entries of
#: a queue table sit. These tables stay small, so vacuuming them after a fixed number of dead rows, without
#: the cost-based pauses, takes milliseconds.
HIGH_CHURN_TABLES = {
    "eas_sql_queue": dict(autovacuum_vacuum_scale_factor=0, autovacuum_vacuum_threshold=1000,
                          autovacuum_vacuum_insert_scale_factor=0, autovacuum_vacuum_insert_threshold=1000,
                          autovacuum_analyze_scale_factor=0, autovacuum_analyze_threshold=1000,
                          autovacuum_vacuum_cost_delay=0),
    "eas_workers": dict(autovacuum_vacuum_scale_factor=0, autovacuum_vacuum_threshold=200,
                        autovacuum_vacuum_cost_delay=0),
}


def has_table_vacuum(bind: Connection | Engine) -> bool:
    """Whether deleted and updated rows stay behind as dead tuples until a VACUUM (PostgreSQL)."""
    return family(bind) == "postgresql"


def tune_autovacuum(connection: Connection, reset: bool = False, settings: dict | None = None) -> None:
    """Set (or, with ``reset``, remove) autovacuum settings, {table: {parameter: value}} (default
    :data:`HIGH_CHURN_TABLES`, what a new schema gets); nothing elsewhere."""
    if not has_table_vacuum(connection):
        return
    for table, parameters in (HIGH_CHURN_TABLES if settings is None else settings).items():
        if reset:
            connection.exec_driver_sql("ALTER TABLE %s RESET (%s)" % (table, ", ".join(parameters)))
        else:
            connection.exec_driver_sql("ALTER TABLE %s SET (%s)" % (
                table, ", ".join("%s = %s" % item for item in parameters.items())))


def table_settings(connection: Connection, table: str) -> dict[str, str]:
    """A table's storage parameters (PostgreSQL's ``reloptions``; empty elsewhere)."""
    if not has_table_vacuum(connection):
        return {}
    options = connection.execute(sa.text("SELECT reloptions FROM pg_class WHERE relname = :table"),
                                 dict(table=table)).scalar()
    return dict(option.split("=", 1) for option in options or [])


def dead_rows(engine: Engine, table: str) -> int | None:
    """Dead tuples the server counts in ``table`` (PostgreSQL; None elsewhere). One cheap statistics read."""
    if not has_table_vacuum(engine):
        return None
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = :table"),
                                  dict(table=table)).scalar()


def vacuum(engine: Engine, table: str) -> None:
    """``VACUUM (ANALYZE)`` one table, outside a transaction as PostgreSQL requires (nothing elsewhere)."""
    if not has_table_vacuum(engine):
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE) %s" % table)


#: The channel on which transactions that queue SQL-queue rows notify idle workers (PostgreSQL).
QUEUE_CHANNEL = "eas_queue"


def has_notifications(bind: Connection | Engine) -> bool:
    """Whether the server can wake listening workers when work is queued (PostgreSQL ``LISTEN``/``NOTIFY``,
    through psycopg 3)."""
    return family(bind) == "postgresql" and bind.dialect.driver == "psycopg"


def notify_queued(connection: Connection) -> None:
    """``NOTIFY`` the queue channel; delivered when (and only if) this transaction commits, once per
    transaction however often it is called. Nothing elsewhere."""
    if has_notifications(connection):
        connection.exec_driver_sql("NOTIFY %s" % QUEUE_CHANNEL)


class QueueListener:
    """One connection of its own that ``LISTEN``s on the queue channel (PostgreSQL only; see
    :func:`has_notifications`). :meth:`wait` blocks until a notification arrives or ``timeout`` passes;
    it sends no statement while it waits. A lost connection is reopened on the next :meth:`wait`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.connection = None  # the psycopg connection, outside the engine's pool

    def _open(self) -> None:
        raw = self.engine.raw_connection()
        connection = raw.driver_connection
        raw.detach()  # never returned to the pool: it stays in LISTEN for this worker's lifetime
        connection.rollback()
        connection.autocommit = True
        connection.execute("LISTEN %s" % QUEUE_CHANNEL)
        self.connection = connection

    def wait(self, timeout: float) -> bool:
        """True when a notification arrived (one is consumed), False on timeout. Raises the
        driver's error when the connection is lost (after closing it)."""
        try:
            if self.connection is None:
                self._open()
            for _notification in self.connection.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
