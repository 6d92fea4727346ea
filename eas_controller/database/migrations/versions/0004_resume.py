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

from eas_controller.database.migrate import record_version

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    type_columns = {column["name"] for column in inspector.get_columns("eas_task_types")}
    if "version" not in type_columns:
        op.add_column("eas_task_types", sa.Column("version", sa.String(64), nullable=False, server_default="1"))
    task_columns = {column["name"] for column in inspector.get_columns("eas_tasks")}
    for name, column_type in (("type_version", sa.String(64)), ("fingerprint", sa.String(64)),
                              ("reused_from_attempt_id", sa.Integer)):
        if name not in task_columns:
            op.add_column("eas_tasks", sa.Column(name, column_type))
    record_version(op.get_bind(), 4)


def downgrade() -> None:
    for name in ("reused_from_attempt_id", "fingerprint", "type_version"):
        op.drop_column("eas_tasks", name)
    op.drop_column("eas_task_types", "version")
    record_version(op.get_bind(), 3)
