"""Schema version 4: what resuming a job compares and records.

``eas_task_types.version`` (the registry's ``version`` of each task type, "1" unless given);
``eas_tasks.type_version`` (the version its task type had when the task was created),
``eas_tasks.fingerprint`` (a hash of the task's own fields: type, type version, evaluated description) and
``eas_tasks.reused_from_attempt_id`` (set on a task that ``submit.py --resume`` took over from an earlier
succeeded attempt instead of running it). Existing rows: types get version "1", tasks NULLs (an earlier
task is compared field by field, so a resume still finds it).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from eas_controller.database.migrate import add_missing_columns, record_version

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    add_missing_columns("eas_task_types", sa.Column("version", sa.String(64), nullable=False, server_default="1"))
    add_missing_columns("eas_tasks", sa.Column("type_version", sa.String(64)), sa.Column("fingerprint", sa.String(64)),
                        sa.Column("reused_from_attempt_id", sa.Integer))
    record_version(op.get_bind(), 4)


def downgrade() -> None:
    for name in ("reused_from_attempt_id", "fingerprint", "type_version"):
        op.drop_column("eas_tasks", name)
    op.drop_column("eas_task_types", "version")
    record_version(op.get_bind(), 3)
