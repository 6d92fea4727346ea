"""Creating, checking and resetting the schema, and recording its version so it can be upgraded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eas_controller.database import dialects, migrate, schema
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
    """Create the schema on a new database, or bring an older one up to this code's version through the
    revisions in ``migrations/`` (see :mod:`.migrate`). Returns what happened, for printing."""
    check_server_version(engine)
    existing = schema_version(engine)
    if existing is not None and existing > schema.SCHEMA_VERSION:
        raise DatabaseError(
            "the database has schema version %d, newer than this code (%d): upgrade EAS Controller"
            % (existing, schema.SCHEMA_VERSION)
        )
    if existing is None:
        schema.metadata_obj.create_all(engine)
        with write_transaction(engine) as connection:
            dialects.tune_autovacuum(connection)  # what revision 0006 sets on an older database
            migrate.record_version(connection, schema.SCHEMA_VERSION)
        migrate.stamp(engine, migrate.head())
        return "created schema version %d" % schema.SCHEMA_VERSION
    return upgrade_schema(engine, existing)


def upgrade_schema(engine: Engine, existing: int) -> str:
    """Apply the pending revisions to a database at schema version ``existing``.

    ``eas_schema_info`` is the truth about the version (it is what every command checks): a database made
    before the revisions existed, or whose Alembic record disagrees with it, is first stamped with the
    revision of that version. A revision this code does not know means the database is newer: refused.
    """
    known = migrate.revisions()
    recorded = migrate.current_revision(engine)
    if recorded == known[-1] and existing == schema.SCHEMA_VERSION:
        return "schema version %d already present" % schema.SCHEMA_VERSION  # the common case, without Alembic's runner
    if recorded is not None and recorded not in known:
        raise DatabaseError(
            "the database has schema revision %s, newer than this code (revision %s, schema version %d): "
            "upgrade EAS Controller" % (recorded, known[-1], schema.SCHEMA_VERSION)
        )
    if recorded is None or migrate.version_of(recorded) != existing:
        start = migrate.revision_for(existing)
        if start not in known:
            raise DatabaseError("the database has schema version %d, which no revision of this code describes: "
                                "restore it from a save (db_restore.py) into a new database" % existing)
        migrate.stamp(engine, start)
    applied = migrate.upgrade(engine)
    if not applied:
        return "schema version %d already present" % schema.SCHEMA_VERSION
    return "upgraded schema version %d to schema version %d (revisions %s)" % (
        existing, schema.SCHEMA_VERSION, ", ".join(applied))


def drop_schema(engine: Engine) -> None:
    schema.metadata_obj.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS %s" % migrate.VERSION_TABLE))


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
