"""Schema version 1, the first released schema: every table as version 1 created it.

Frozen here as it was (never import the live table definitions into a revision: they move on).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from eas_controller.database.migrate import record_version

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


def _points_to(name: str, table: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey("%s.id" % table), nullable=nullable)


def _table(name: str, *columns_and_indexes) -> None:
    """A table keyed by an integer ``id``, as every table of version 1 but ``eas_schema_info`` is (its indexes
    are listed first)."""
    op.create_table(name, _id(), *columns_and_indexes)


def upgrade() -> None:
    op.create_table(
        "eas_schema_info",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    _table(
        "eas_task_types",
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("container", sa.String(255)),
        sa.Column("cpu", sa.Double, nullable=False),
        sa.Column("gpu", sa.Integer, nullable=False),
        sa.Column("memory_gb", sa.Double, nullable=False),
        sa.Column("max_attempts", sa.Integer),
        sa.Column("timeout_s", sa.Double),
        sa.Column("qc", sa.String(255)),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    _table(
        "eas_jobs",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(1024)),
        sa.Column("submitted_at", sa.Double, nullable=False),
    )
    _table(
        "eas_tasks",
        sa.Index("ix_eas_tasks_state_priority", "state", "priority", "id"),
        sa.Index("ix_eas_tasks_job", "job_id", "state"),
        sa.Index("ix_eas_tasks_parent", "parent_id"),
        _points_to("job_id", "eas_jobs"),
        _points_to("parent_id", "eas_tasks", nullable=True),
        sa.Column("name", sa.String(255)),
        sa.Column("chain_path", sa.String(1024), nullable=False),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("is_control", sa.Boolean, nullable=False),
        sa.Column("job_name", sa.String(255), nullable=False),
        sa.Column("working_directory", sa.String(512), nullable=False),
        sa.Column("description", LongText, nullable=False),
        sa.Column("metadata", LongText, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expansions", sa.Integer, nullable=False),
        sa.Column("needs_evaluation", sa.Boolean, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("unmet_dependencies", sa.Integer, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer),
        sa.Column("not_before", sa.Double),
        sa.Column("error_text", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    _table(
        "eas_task_dependencies",
        sa.Index("ix_eas_dependencies_requires", "requires_task_id"),
        sa.Index("ix_eas_dependencies_task", "task_id"),
        _points_to("task_id", "eas_tasks"),
        _points_to("requires_task_id", "eas_tasks"),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("product_id", sa.Integer),
        sa.Column("satisfied", sa.Boolean, nullable=False),
    )
    _table(
        "eas_attempts",
        sa.Index("ix_eas_attempts_task", "task_id"),
        sa.Index("ix_eas_attempts_state_lease", "state", "lease_expires_at"),
        _points_to("task_id", "eas_tasks"),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(8), nullable=False),
        sa.Column("queued_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("ended_at", sa.Double),
        sa.Column("lease_expires_at", sa.Double),
        sa.Column("worker_id", sa.Integer),
        sa.Column("worker_name", sa.String(255)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("exit_status", sa.Integer),
        sa.Column("wall_s", sa.Double),
        sa.Column("cpu_s", sa.Double),
        sa.Column("cpu_children_s", sa.Double),
        sa.Column("error_text", sa.Text),
    )
    _table(
        "eas_sql_queue",
        sa.Index("ix_eas_sql_queue_claim", "task_type", "rank", "id"),
        sa.Index("ix_eas_sql_queue_order", "rank", "id"),
        sa.Column("attempt_id", sa.Integer, nullable=False, unique=True),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("enqueued_at", sa.Double, nullable=False),
    )
    _table(
        "eas_workers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("cpus", sa.Double, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("memory_gb", sa.Double, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("free_slots", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("last_seen", sa.Double, nullable=False),
    )
    op.create_table(
        "eas_log_lines",
        sa.Index("ix_eas_log_lines_attempt", "attempt_id", "id"),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("attempt_id", sa.Integer, nullable=False),
        sa.Column("task_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    _table(
        "eas_products",
        sa.Index("ix_eas_products_path", "relative_path"),
        sa.Index("ix_eas_products_task", "task_id"),
        _points_to("task_id", "eas_tasks"),
        sa.Column("semantic_type", sa.String(128), nullable=False),
        sa.Column("relative_path", sa.String(760), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("latest_version_id", sa.Integer),
    )
    _table(
        "eas_product_versions",
        sa.Index("ix_eas_product_versions_product", "product_id"),
        _points_to("product_id", "eas_products"),
        sa.Column("attempt_id", sa.Integer, nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("md5", sa.String(32), nullable=False),
        sa.Column("qc_state", sa.String(16), nullable=False),
        sa.Column("qc_message", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    _table(
        "eas_metadata",
        sa.Index("ix_eas_metadata_task", "task_id", "scope"),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("task_id", sa.Integer, nullable=False),
        sa.Column("attempt_id", sa.Integer),
        sa.Column("product_id", sa.Integer),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value_type", sa.String(8), nullable=False),
        sa.Column("value", LongText, nullable=False),
    )
    record_version(op.get_bind(), 1)


def downgrade() -> None:
    for name in ("eas_metadata", "eas_product_versions", "eas_products", "eas_log_lines", "eas_workers",
                 "eas_sql_queue", "eas_attempts", "eas_task_dependencies", "eas_tasks", "eas_jobs", "eas_task_types",
                 "eas_schema_info"):
        op.drop_table(name)
