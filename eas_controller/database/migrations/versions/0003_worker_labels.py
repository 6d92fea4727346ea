"""Schema version 3: where each worker runs (``eas_workers.labels``, a JSON object such as Slurm job ids).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from eas_controller.database.migrate import record_version

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("eas_workers")}
    if "labels" not in columns:
        op.add_column("eas_workers", sa.Column("labels", sa.Text))
    record_version(op.get_bind(), 3)


def downgrade() -> None:
    op.drop_column("eas_workers", "labels")
    record_version(op.get_bind(), 2)
