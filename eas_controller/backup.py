"""Saving the whole task database to a portable file, and restoring it into any supported database.

The file is gzip-compressed JSON lines: a header (format, schema version, where it came from, the tables
and their columns), then for each table a ``{"table": ...}`` line, one JSON array per row in primary-key
order and an ``{"end": ..., "rows": n}`` line, and a final ``{"complete": true}`` line so that a truncated
file is refused. Rows are read from one consistent snapshot, so a save can run while the pipeline does.
JSON keeps every value exactly (floats round-trip), and nothing in it belongs to one database product:
save on SQLite, restore on MariaDB or PostgreSQL, and carry on.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eas_controller.database import schema
from eas_controller.database.bulk import bulk_load_transaction, reset_sequences, snapshot_transaction
from eas_controller.database.engine import read_transaction
from eas_controller.database.manage import create_schema, schema_version

FORMAT = "eas-controller-database"
FORMAT_VERSION = 1
BATCH = 1000

#: Tables a freshly initialised database already fills; rows elsewhere mean "not empty".
SETUP_TABLES = {schema.schema_info.name, schema.task_types.name}


class BackupError(ValueError):
    """A save file cannot be used (wrong format, another schema version, truncated) or would overwrite data."""


def data_tables() -> list[sa.Table]:
    """Every table worth saving, parents before children (schema_info is implied by the header)."""
    return [table for table in schema.metadata_obj.sorted_tables if table is not schema.schema_info]


def save(engine: Engine, path: str, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Write the database to ``path`` (gzip JSON lines); returns rows per table."""
    version = schema_version(engine)
    if version is None:
        raise BackupError("the database has no EAS Controller schema: nothing to save")
    tables = data_tables()
    counts: dict[str, int] = {}
    partial = path + ".partial"
    with snapshot_transaction(engine) as connection, gzip.open(partial, "wt", encoding="utf-8") as out:
        header = dict(format=FORMAT, format_version=FORMAT_VERSION, schema_version=version, saved_at=time.time(),
                      source=engine.dialect.name, tables={table.name: [c.name for c in table.columns] for table in tables})
        out.write(json.dumps(header) + "\n")
        for table in tables:
            columns = [column.name for column in table.columns]
            out.write(json.dumps({"table": table.name, "columns": columns}) + "\n")
            query = sa.select(*table.columns).order_by(*table.primary_key.columns)
            result = connection.execution_options(stream_results=True, yield_per=BATCH).execute(query)
            count = 0
            for row in result:
                out.write(json.dumps(list(row), separators=(",", ":")) + "\n")
                count += 1
            out.write(json.dumps({"end": table.name, "rows": count}) + "\n")
            counts[table.name] = count
            if progress:
                progress(table.name, count)
        out.write(json.dumps({"complete": True, "rows": counts}) + "\n")
    os.replace(partial, path)
    return counts


def read_header(path: str) -> dict:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            header = json.loads(handle.readline())
    except FileNotFoundError:
        raise BackupError("%s: no such file" % path) from None
    except (OSError, ValueError) as error:
        raise BackupError("%s is not an EAS Controller save file (%s)" % (path, error)) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError("%s is not an EAS Controller save file" % path)
    if header.get("format_version") != FORMAT_VERSION:
        raise BackupError("%s has save format %r; this code reads format %d" % (path, header.get("format_version"),
                                                                                FORMAT_VERSION))
    if header.get("schema_version") != schema.SCHEMA_VERSION:
        raise BackupError("%s holds schema version %r but this code has schema version %d: restore it with the "
                          "matching EAS Controller version" % (path, header.get("schema_version"), schema.SCHEMA_VERSION))
    return header


def existing_rows(engine: Engine) -> dict[str, int]:
    """Rows in the tables that hold work (not the registry): a restore refuses to overwrite them."""
    present = set(sa.inspect(engine).get_table_names())
    counts = {}
    with read_transaction(engine) as connection:
        for table in data_tables():
            if table.name in SETUP_TABLES or table.name not in present:
                continue
            if connection.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first() is not None:
                counts[table.name] = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    return counts


def restore(engine: Engine, path: str, force: bool = False,
            progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Load a save file into ``engine``'s database (creating the schema if needed), in one transaction.

    Refuses a database that holds tasks, attempts or logs unless ``force``; then they are replaced.
    """
    header = read_header(path)
    if schema_version(engine) is None:
        create_schema(engine)
    else:
        from eas_controller.database.manage import require_schema

        require_schema(engine)
    occupied = existing_rows(engine)
    if occupied and not force:
        raise BackupError("the target database is not empty (%s); add --force to replace its contents" % ", ".join(
            "%s: %d rows" % item for item in sorted(occupied.items())))
    tables = {table.name: table for table in data_tables()}
    unknown = sorted(set(header["tables"]) - set(tables))
    if unknown:
        raise BackupError("%s has tables this code does not know: %s" % (path, unknown))
    counts: dict[str, int] = {}
    complete = False
    with bulk_load_transaction(engine) as connection, gzip.open(path, "rt", encoding="utf-8") as handle:
        for table in reversed(list(tables.values())):
            connection.execute(table.delete())
        handle.readline()
        table, columns, batch, loaded = None, None, [], 0

        def write() -> None:
            if batch:
                connection.execute(table.insert(), [dict(zip(columns, values)) for values in batch])
                batch.clear()

        for number, line in enumerate(handle, start=2):
            try:
                item = json.loads(line)
            except ValueError:
                raise BackupError("%s line %d is not JSON: the file is damaged" % (path, number)) from None
            if isinstance(item, list):
                if table is None or len(item) != len(columns):
                    raise BackupError("%s line %d: a row outside a table or with the wrong width" % (path, number))
                batch.append(item)
                loaded += 1
                if len(batch) >= BATCH:
                    write()
            elif "table" in item:
                table = tables[item["table"]]
                columns, loaded = item["columns"], 0
                missing = sorted(set(columns) - set(table.c.keys()))
                if missing:
                    raise BackupError("%s: table %s has columns this code does not know: %s" % (path, table.name, missing))
                counts[table.name] = 0
            elif "end" in item:
                write()
                if table is None or loaded != item["rows"]:
                    raise BackupError("%s line %d: table %s should have %s rows but %d were read: the file is "
                                      "damaged" % (path, number, item["end"], item["rows"], loaded))
                counts[table.name] = loaded
                if progress:
                    progress(table.name, item["rows"])
                table = None
            elif item.get("complete"):
                complete = True
        if not complete:
            raise BackupError("%s ends early (no completion line): the save was interrupted or the file truncated;"
                              " nothing was restored" % path)
        reset_sequences(connection, tables.values())
    return counts
