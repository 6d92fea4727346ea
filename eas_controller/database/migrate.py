"""Schema upgrades: the Alembic revisions in ``migrations/``, run on an engine with no ``alembic.ini``.

Revision ``0001`` is schema version 1 (the first released schema), and revision ``000N`` brings a database
to version N; every revision also writes its version into ``eas_schema_info``, which is what every command
checks, so the two never disagree. Alembic keeps its own record in ``eas_alembic_version`` (an EAS name,
so a database shared with another Alembic-managed application keeps both). A database made before the
revisions existed has only ``eas_schema_info``: it is stamped with the revision of its version, then
upgraded like any other.
"""

from __future__ import annotations

import functools
import os

from sqlalchemy.engine import Connection, Engine

VERSION_TABLE = "eas_alembic_version"
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def revision_for(version: int) -> str:
    return "%04d" % version


def version_of(revision: str) -> int:
    return int(revision)


def _config(connection: Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


@functools.lru_cache(maxsize=1)
def _revisions() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    return tuple(revision.revision for revision in reversed(list(script.walk_revisions())))


def revisions() -> list[str]:
    """Every revision this code knows, oldest first."""
    return list(_revisions())


def head() -> str:
    return revisions()[-1]


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in ``eas_alembic_version``, or None when there is none."""
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def stamp(engine: Engine, revision: str) -> None:
    """Record ``revision`` as applied, without running anything."""
    from alembic import command

    with engine.connect() as connection:
        command.stamp(_config(connection), revision, purge=True)
        connection.commit()


def upgrade(engine: Engine, target: str = "head") -> list[str]:
    """Apply the pending revisions up to ``target``; returns those applied, oldest first."""
    from alembic import command

    before = current_revision(engine)
    known = revisions()
    with engine.connect() as connection:
        command.upgrade(_config(connection), target)
        connection.commit()
    after = current_revision(engine)
    start = known.index(before) + 1 if before else 0
    return known[start : known.index(after) + 1] if after else []


def record_version(connection: Connection, version: int) -> None:
    """Write ``version`` into ``eas_schema_info`` (used by each revision, in its own transaction)."""
    from eas_controller.database.schema import schema_info

    updated = connection.execute(
        schema_info.update().where(schema_info.c.key == "schema_version").values(value=str(version))
    ).rowcount
    if not updated:
        connection.execute(schema_info.insert().values(key="schema_version", value=str(version)))


def add_missing_columns(table: str, *columns) -> None:
    """Inside a revision: add each of ``columns`` that ``table`` lacks (so running a revision twice, or on a
    database that already has a column, changes nothing)."""
    import sqlalchemy as sa
    from alembic import op

    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns(table)}
    for column in columns:
        if column.name not in present:
            op.add_column(table, column)
