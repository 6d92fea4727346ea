"""Multi-row INSERTs that send a value shared by every row once, not once per row.

The MySQL drivers (mysqlclient, PyMySQL) put parameters into the statement text on the client, escaping
every value of every row in Python: for a submission of 10,000 tasks, 230,000 values, most of them the
same in every row (the job, the type, the state, the timestamps). :func:`split_constants` takes the columns
whose value is the same in every row out of the parameters and writes them into the statement as SQL
literals, escaped once by the driver's own ``literal()`` (after the column type's own conversion, as a
parameter would be). Drivers that bind parameters on the server (psycopg) or in process (SQLite) gain
nothing and are left alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.engine import MYSQL_FAMILY

_MISSING = object()


def escapes_on_client(connection: Connection) -> bool:
    """Whether the driver writes parameters into the statement text itself (and offers ``literal()``), on a
    server with ``INSERT ... RETURNING`` (MariaDB; MySQL 8 has none): statements with literals in their
    VALUES are batched by SQLAlchemy only when they return something (the drivers' own ``executemany``
    sends such a statement once per row)."""
    return (connection.dialect.name in MYSQL_FAMILY and connection.dialect.insert_returning
            and hasattr(connection.connection.dbapi_connection, "literal"))


def split_constants(connection: Connection, table: sa.Table, rows: list[dict]) -> tuple[dict, list[dict]]:
    """({column: SQL literal} for the columns with one value in every row, the rows without those columns).

    At least one column stays a parameter (an executemany of empty rows would be one row); with one row, or
    a driver that binds on the server, nothing is taken out."""
    if len(rows) < 2 or not escapes_on_client(connection):
        return {}, rows
    first = rows[0]
    shared = []
    for column, value in first.items():
        kind = type(value)
        if all(type(row.get(column, _MISSING)) is kind and row[column] == value for row in rows):
            shared.append(column)
    if len(shared) == len(first):
        shared.pop()
    if not shared:
        return {}, rows
    literal = connection.connection.dbapi_connection.literal
    dialect = connection.dialect
    constants = {}
    for column in shared:
        value = first[column]
        process = table.c[column].type._cached_bind_processor(dialect)
        rendered = literal(process(value) if process is not None else value)
        constants[column] = sa.literal_column(rendered.decode() if isinstance(rendered, bytes) else rendered)
    names = set(shared)
    return constants, [{column: value for column, value in row.items() if column not in names} for row in rows]


def insert_rows(connection: Connection, table: sa.Table, rows: list[dict]) -> None:
    """Insert ``rows`` (dicts with the same keys) in as few statements as the driver allows."""
    constants, varying = split_constants(connection, table, rows)
    if constants:  # RETURNING (of the ids, unused) makes SQLAlchemy send the rows in batches
        connection.execute(table.insert().values(constants).returning(table.c.id), varying).all()
    else:
        connection.execute(table.insert(), rows)
