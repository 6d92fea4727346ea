"""Table definitions (SQLAlchemy Core), shared by SQLite, MariaDB/MySQL and PostgreSQL.

Times are stored as epoch seconds in DOUBLE columns: portable, sub-millisecond, and cheap to subtract.
Task and attempt states live in one column each; :mod:`eas_controller.states` names the values and the
allowed transitions. The SQL queue has its own narrow table (only what is queued right now), so the cost
of claiming does not grow with the history of finished work.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

SCHEMA_VERSION = 6

#: Long JSON documents: TEXT is only 64 KiB on MySQL.
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

metadata_obj = MetaData()

schema_info = Table(
    "eas_schema_info",
    metadata_obj,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

task_types = Table(
    "eas_task_types",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # python | command
    Column("target", Text, nullable=False),  # module:function, or the command template
    Column("container", String(255)),
    Column("cpu", Double, nullable=False, default=1),
    Column("gpu", Integer, nullable=False, default=0),
    Column("memory_gb", Double, nullable=False, default=0),
    Column("max_attempts", Integer),
    Column("timeout_s", Double),
    Column("qc", String(255)),
    Column("version", String(64), nullable=False, server_default="1"),  # the registry's version
    Column("limit_key", Text),  # concurrency_limit.key: a constant or an expression (None: the type's name)
    Column("limit_max", Integer),  # concurrency_limit.max (None: no limit)
    Column("definition", Text, nullable=False),  # the registry entry as JSON
    Column("source", String(1024), nullable=False),
    Column("updated_at", Double, nullable=False),
)

jobs = Table(
    "eas_jobs",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("source", String(1024)),
    Column("submitted_at", Double, nullable=False),
)

tasks = Table(
    "eas_tasks",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("eas_jobs.id"), nullable=False),
    Column("parent_id", Integer, ForeignKey("eas_tasks.id")),
    Column("name", String(255)),
    Column("chain_path", String(1024), nullable=False),  # e.g. task_list[0].task_list[2]
    Column("task_type", String(128), nullable=False),
    Column("is_control", Boolean, nullable=False, default=False),
    Column("job_name", String(255), nullable=False),
    Column("working_directory", String(512), nullable=False, default=""),
    Column("description", LongText, nullable=False),  # JSON; evaluated unless evaluation waits for metadata
    Column("metadata", LongText, nullable=False),  # JSON: metadata inherited from parents (loop values...)
    Column("state", String(16), nullable=False),
    Column("expansions", Integer, nullable=False, default=0),  # control tasks: passes expanded so far
    Column("needs_evaluation", Boolean, nullable=False, default=False),  # fields wait for requested metadata
    Column("priority", Integer, nullable=False, default=0),
    Column("unmet_dependencies", Integer, nullable=False, default=0),
    Column("attempt_count", Integer, nullable=False, default=0),
    Column("max_attempts", Integer),
    Column("not_before", Double),  # retry backoff: not promoted before this time
    Column("limit_key", String(255)),  # concurrency limit key, evaluated at creation (None: no limit)
    Column("error_text", Text),
    Column("type_version", String(64)),  # the task type's registry version when the task was created
    Column("fingerprint", String(64)),  # hash of type, type version and evaluated description (docs/resume.md)
    Column("reused_from_attempt_id", Integer),  # submit.py --resume: the succeeded attempt it took over
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Index("ix_eas_tasks_state_priority", "state", "priority", "id"),
    Index("ix_eas_tasks_job", "job_id", "state"),
    Index("ix_eas_tasks_parent", "parent_id"),
    Index("ix_eas_tasks_limit", "limit_key", "state"),  # the queued tasks of a concurrency limit key
)

task_dependencies = Table(
    "eas_task_dependencies",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("eas_tasks.id"), nullable=False),  # the task that waits
    Column("requires_task_id", Integer, ForeignKey("eas_tasks.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # file | metadata | child
    Column("product_id", Integer),
    Column("satisfied", Boolean, nullable=False, default=False),
    Index("ix_eas_dependencies_requires", "requires_task_id"),
    Index("ix_eas_dependencies_task", "task_id"),
)

# Dependencies of control-flow tasks delivered but not yet counted down. Every child of a chain or loop
# counts down its parent, so concurrent completions would all update that one row; they append here instead
# and the scheduler, which acts on control tasks anyway, counts them in bulk (scheduler.count_control_progress).
control_progress = Table(
    "eas_control_progress",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, nullable=False),  # the control task that waits (no foreign key: no lock on its row)
    Column("delivered", Integer, nullable=False),  # how many of its dependencies finished
    Column("created_at", Double, nullable=False),
)

attempts = Table(
    "eas_attempts",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("eas_tasks.id"), nullable=False),
    Column("number", Integer, nullable=False),  # 1, 2, ... per task
    Column("task_type", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("queue", String(8), nullable=False, default="sql"),  # which queue carries it
    Column("queued_at", Double, nullable=False),
    Column("started_at", Double),
    Column("ended_at", Double),
    Column("lease_expires_at", Double),
    Column("worker_id", Integer),
    Column("worker_name", String(255)),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("exit_status", Integer),
    Column("wall_s", Double),
    Column("cpu_s", Double),
    Column("cpu_children_s", Double),
    Column("error_text", Text),
    Index("ix_eas_attempts_task", "task_id"),
    Index("ix_eas_attempts_state_lease", "state", "lease_expires_at"),
    Index("ix_eas_attempts_queue_state", "queue", "state"),  # attempts held back by a full concurrency limit
)

sql_queue = Table(
    "eas_sql_queue",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("attempt_id", Integer, nullable=False, unique=True),
    Column("task_type", String(128), nullable=False),
    Column("rank", Integer, nullable=False),  # -priority, so that an ascending index serves the claim order
    Column("enqueued_at", Double, nullable=False),
    Column("limit_key", String(255)),  # the task's concurrency limit key: claims skip keys that are full
    Index("ix_eas_sql_queue_claim", "task_type", "rank", "id"),
    Index("ix_eas_sql_queue_order", "rank", "id"),  # workers that run every type
)

# One row per concurrency limit key. A claim locks the rows of the keys it would start (FOR UPDATE; SQLite's
# write lock serialises claims anyway) and counts the key's running attempts: the count, not a counter, says
# how many slots are taken, so an attempt frees its slot in whatever transaction moves it out of running.
concurrency_limits = Table(
    "eas_concurrency_limits",
    metadata_obj,
    Column("key", String(255), primary_key=True),
    Column("max_running", Integer, nullable=False),  # as the latest task created with this key declared it
    Column("updated_at", Double, nullable=False),
)

workers = Table(
    "eas_workers",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("capabilities", Text, nullable=False),  # JSON list of task types it runs
    Column("cpus", Double, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("memory_gb", Double, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("free_slots", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # running | stopping | stopped
    Column("started_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("labels", Text),  # JSON: where the worker runs (Slurm job and array ids, pod name)
)

log_lines = Table(
    "eas_log_lines",
    metadata_obj,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("attempt_id", Integer, nullable=False),
    Column("task_id", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("severity", String(8), nullable=False),  # DEBUG | INFO | WARNING | ERROR
    Column("stream", String(8), nullable=False),  # stdout | stderr | worker
    Column("message", Text, nullable=False),
    Index("ix_eas_log_lines_attempt", "attempt_id", "id"),
)

products = Table(
    "eas_products",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("eas_tasks.id"), nullable=False),  # the producer
    Column("semantic_type", String(128), nullable=False),
    Column("relative_path", String(760), nullable=False),  # working_directory/filename
    Column("state", String(16), nullable=False),  # planned | made | failed_qc
    Column("latest_version_id", Integer),
    Index("ix_eas_products_path", "relative_path"),
    Index("ix_eas_products_task", "task_id"),
)

product_versions = Table(
    "eas_product_versions",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("product_id", Integer, ForeignKey("eas_products.id"), nullable=False),
    Column("attempt_id", Integer, nullable=False),
    Column("path", String(2048), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("md5", String(32), nullable=False),
    Column("qc_state", String(16), nullable=False),  # passed | failed | unchecked
    Column("qc_message", Text),
    Column("created_at", Double, nullable=False),
    Index("ix_eas_product_versions_product", "product_id"),
)

metadata_items = Table(
    "eas_metadata",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(16), nullable=False),  # task | attempt | product
    Column("task_id", Integer, nullable=False),
    Column("attempt_id", Integer),
    Column("product_id", Integer),
    Column("key", String(255), nullable=False),
    Column("value_type", String(8), nullable=False),  # str | int | float | bool | json
    Column("value", LongText, nullable=False),  # JSON encoding of the value
    Index("ix_eas_metadata_task", "task_id", "scope"),
)
