"""Alembic's environment: runs the revisions on the connection that :mod:`eas_controller.database.migrate`
hands over (no ``alembic.ini`` and no URL of its own).

Each revision runs in its own transaction, so a database left half way by a failed upgrade (MariaDB/MySQL
commit every DDL statement at once) restarts from the last revision that completed.
"""

from alembic import context

from eas_controller.database import schema
from eas_controller.database.migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the EAS Controller migrations run through eas_controller.database.migrate "
                       "(init_schema.py --upgrade), which provides the database connection")
context.configure(connection=connection, target_metadata=schema.metadata_obj, version_table=VERSION_TABLE,
                  transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
