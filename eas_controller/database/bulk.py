"""Dialect differences of whole-database copies (``db_save.py`` / ``db_restore.py``), kept in one place.

- A consistent snapshot to read every table from: REPEATABLE READ on PostgreSQL and MariaDB/MySQL (the
  engines default to READ COMMITTED), a single read transaction on SQLite (WAL gives it a snapshot).
- Foreign-key checks while rows with their original ids go in: MariaDB/MySQL checks each row at once, so
  a self-referencing table cannot be emptied or filled in one statement; the session turns checks off.
- Sequences after rows were inserted with explicit ids: PostgreSQL's do not move by themselves (setval);
  MariaDB/MySQL's AUTO_INCREMENT and SQLite's rowid already continue past the largest id.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eas_controller.database.dialects import (
    checks_foreign_keys_per_row,
    needs_explicit_snapshot,
    sequences_follow_explicit_ids,
)
from eas_controller.database.engine import write_transaction


@contextmanager
def snapshot_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only view of every table as of one moment."""
    with engine.connect() as connection:
        if needs_explicit_snapshot(engine):
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


@contextmanager
def bulk_load_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction for loading rows with explicit ids (foreign keys unchecked on MySQL)."""
    with write_transaction(engine) as connection:
        mysql = checks_foreign_keys_per_row(engine)
        if mysql:
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
        try:
            yield connection
        finally:
            if mysql:
                connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")


def reset_sequences(connection: Connection, tables) -> None:
    """Make new rows get ids past the largest existing one (PostgreSQL: setval on each id sequence)."""
    if sequences_follow_explicit_ids(connection):
        return
    for table in tables:
        key = [column for column in table.primary_key.columns if column.autoincrement is not False]
        if len(key) != 1 or not isinstance(key[0].type, sa.Integer):
            continue
        column = key[0].name
        sequence = connection.execute(sa.text("SELECT pg_get_serial_sequence(:table, :column)"),
                                      {"table": table.name, "column": column}).scalar()
        if sequence is None:
            continue
        largest = connection.execute(sa.select(sa.func.max(table.c[column]))).scalar()
        if largest is None:
            connection.execute(sa.text("SELECT setval(:sequence, 1, false)"), {"sequence": sequence})
        else:
            connection.execute(sa.text("SELECT setval(:sequence, :value, true)"), {"sequence": sequence, "value": largest})
