"""Schema version 2: the control-progress work list.

Completions of a chain's or loop's children append a row here instead of all updating the parent's row;
the scheduler counts them down. A version-1 database needs no data moved: its parents' counts of unmet
dependencies are already up to date, and the scheduler counts down from there.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from eas_controller.database.migrate import record_version

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("eas_control_progress"):  # init_schema.py before 3 made missing tables
        op.create_table(
            "eas_control_progress",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("task_id", sa.Integer, nullable=False),
            sa.Column("delivered", sa.Integer, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
        )
    record_version(op.get_bind(), 2)


def downgrade() -> None:
    op.drop_table("eas_control_progress")
    record_version(op.get_bind(), 1)
