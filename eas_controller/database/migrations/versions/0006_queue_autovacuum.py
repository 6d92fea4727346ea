"""Schema version 6: autovacuum settings of the high-churn tables.

On PostgreSQL, ``eas_sql_queue`` (a row deleted by every claim) and ``eas_workers`` (a row rewritten by
every heartbeat) are vacuumed after a fixed number of dead rows rather than 20% of the table, without the
cost-based pauses. The settings are written out here, as this revision set them: a later change to
:data:`eas_controller.database.dialects.HIGH_CHURN_TABLES` belongs in a revision of its own. No change on
SQLite or MariaDB/MySQL, apart from the version number.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from eas_controller.database.dialects import tune_autovacuum
from eas_controller.database.migrate import record_version

revision = "0006"
down_revision = "0005"

SETTINGS = {
    "eas_sql_queue": dict(autovacuum_vacuum_scale_factor=0, autovacuum_vacuum_threshold=1000,
                          autovacuum_vacuum_insert_scale_factor=0, autovacuum_vacuum_insert_threshold=1000,
                          autovacuum_analyze_scale_factor=0, autovacuum_analyze_threshold=1000,
                          autovacuum_vacuum_cost_delay=0),
    "eas_workers": dict(autovacuum_vacuum_scale_factor=0, autovacuum_vacuum_threshold=200,
                        autovacuum_vacuum_cost_delay=0),
}


def upgrade() -> None:
    tune_autovacuum(op.get_bind(), settings=SETTINGS)
    record_version(op.get_bind(), 6)


def downgrade() -> None:
    tune_autovacuum(op.get_bind(), reset=True, settings=SETTINGS)
    record_version(op.get_bind(), 5)
