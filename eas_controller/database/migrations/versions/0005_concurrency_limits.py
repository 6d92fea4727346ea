"""Schema version 5: concurrency limits by key.

- ``eas_task_types.limit_key`` / ``limit_max``: a type's ``concurrency_limit`` from the registry;
- ``eas_tasks.limit_key`` and ``eas_sql_queue.limit_key``: each task's key, evaluated when it was created
  (tasks of an older database have none: no limit);
- ``eas_concurrency_limits``: one row per key (its ``max_running``), locked by the claims that start
  attempts of that key;
- indexes ``ix_eas_attempts_queue_state`` and ``ix_eas_tasks_limit``: the scheduler finds the AMQP attempts
  held back by a full limit, and how many tasks of a key are queued.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from eas_controller.database.migrate import add_missing_columns, record_version

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    add_missing_columns("eas_task_types", sa.Column("limit_key", sa.Text), sa.Column("limit_max", sa.Integer))
    add_missing_columns("eas_tasks", sa.Column("limit_key", sa.String(255)))
    add_missing_columns("eas_sql_queue", sa.Column("limit_key", sa.String(255)))
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("eas_concurrency_limits"):
        op.create_table(
            "eas_concurrency_limits",
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("max_running", sa.Integer, nullable=False),
            sa.Column("updated_at", sa.Double, nullable=False),
        )
    if "ix_eas_attempts_queue_state" not in {index["name"] for index in inspector.get_indexes("eas_attempts")}:
        op.create_index("ix_eas_attempts_queue_state", "eas_attempts", ["queue", "state"])
    if "ix_eas_tasks_limit" not in {index["name"] for index in inspector.get_indexes("eas_tasks")}:
        op.create_index("ix_eas_tasks_limit", "eas_tasks", ["limit_key", "state"])
    record_version(op.get_bind(), 5)


def downgrade() -> None:
    op.drop_index("ix_eas_tasks_limit", "eas_tasks")
    op.drop_index("ix_eas_attempts_queue_state", "eas_attempts")
    op.drop_table("eas_concurrency_limits")
    op.drop_column("eas_sql_queue", "limit_key")
    op.drop_column("eas_tasks", "limit_key")
    op.drop_column("eas_task_types", "limit_max")
    op.drop_column("eas_task_types", "limit_key")
    record_version(op.get_bind(), 4)
