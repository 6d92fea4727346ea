"""Creating, checking and resetting the schema, and recording its version so it can be upgraded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eas_controller.database import schema
from eas_controller.database.engine import DatabaseError, check_server_version, write_transaction


def schema_version(engine: Engine) -> int | None:
    """The stored schema version, or None when the schema was never created."""
    if not sa.inspect(engine).has_table(schema.schema_info.name):
        return None
    with engine.connect() as connection:
        value = connection.execute(
            sa.select(schema.schema_info.c.value).where(schema.schema_info.c.key == "schema_version")
        ).scalar()
    return int(value) if value is not None else None


def create_schema(engine: Engine) -> str:
    """Create missing tables (idempotent) and record the version. Returns what happened, for printing."""
    check_server_version(engine)
    existing = schema_version(engine)
    if existing is not None and existing > schema.SCHEMA_VERSION:
        raise DatabaseError(
            "the database has schema version %d, newer than this code (%d): upgrade EAS Controller"
            % (existing, schema.SCHEMA_VERSION)
        )
    schema.metadata_obj.create_all(engine)
    if existing is not None and existing < 3:
        _add_worker_labels(engine)
    with write_transaction(engine) as connection:
        table = schema.schema_info
        if existing is None:
            connection.execute(table.insert().values(key="schema_version", value=str(schema.SCHEMA_VERSION)))
            return "created schema version %d" % schema.SCHEMA_VERSION
        connection.execute(
            table.update().where(table.c.key == "schema_version").values(value=str(schema.SCHEMA_VERSION))
        )
    return "schema version %d already present" % schema.SCHEMA_VERSION


def _add_worker_labels(engine: Engine) -> None:
    """Version 2 -> 3: ``eas_workers.labels`` (where a worker runs: Slurm job and array ids, pod name)."""
    columns = {column["name"] for column in sa.inspect(engine).get_columns(schema.workers.name)}
    if "labels" not in columns:
        with write_transaction(engine) as connection:
            connection.exec_driver_sql("ALTER TABLE %s ADD COLUMN labels TEXT" % schema.workers.name)


def drop_schema(engine: Engine) -> None:
    schema.metadata_obj.drop_all(engine)


def require_schema(engine: Engine) -> None:
    """Fail with a clear message if ``init_schema.py`` has not been run on this database."""
    version = schema_version(engine)
    if version is None:
        raise DatabaseError(
            "the database at %s has no EAS Controller schema: run "
            "eas_controller/database_initialisation/init_schema.py first" % engine.url.render_as_string(True)
        )
    if version != schema.SCHEMA_VERSION:
        raise DatabaseError(
            "the database has schema version %d but this code expects %d: run init_schema.py to upgrade"
            % (version, schema.SCHEMA_VERSION)
        )
