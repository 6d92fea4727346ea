"""Writing a :class:`~eas_controller.chains.Plan` into the database, in the caller's transaction.

Used by submission (a whole chain in one transaction: a bad file leaves nothing behind) and by the
scheduler (the children of a control task it expands at run time). Inserts go level by level with as few
round trips as the back end allows, so a 10^5-task chain costs a few hundred statements.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states, uris
from eas_controller.chains import ChainError, Plan
from eas_controller.database.dialects import insert_rows_returning_ids
from eas_controller.database.engine import chunks
from eas_controller.database.many_rows import insert_rows
from eas_controller.database.schema import jobs, products, task_dependencies, task_types, tasks
from eas_controller.store import limits as limit_store

#: description fields that do not change what a task makes: left out of its fingerprint
NOT_FINGERPRINTED = ("comment", "priority")


def compared_fields(description: dict) -> dict:
    """The part of an evaluated description that :func:`fingerprint` hashes (and a resume compares)."""
    return {key: value for key, value in description.items() if key not in NOT_FINGERPRINTED}


def fingerprint(task_type: str, type_version: str, description: dict) -> str:
    """sha256 of the task type, its registry version and the evaluated description (canonical JSON)."""
    canonical = json.dumps([task_type, type_version, compared_fields(description)], sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def type_versions(connection: Connection) -> dict[str, str]:
    """{task type: its registry version}."""
    return dict(connection.execute(sa.select(task_types.c.name, task_types.c.version)).all())


def find_producers(connection: Connection, paths: Iterable[str], lock: bool = True) -> dict[str, tuple[int, bool]]:
    """For each relative path already planned in the database: (producing task id, product ready to read).

    The producers' rows are locked: a producer finishing at this moment either commits first (and is seen
    as done) or waits for this transaction (and then releases the dependency rows written here).
    """
    found: dict[str, tuple[int, bool]] = {}
    paths = sorted(set(paths))
    for chunk in chunks(paths):
        query = (
            sa.select(products.c.relative_path, products.c.task_id, products.c.state, tasks.c.state.label("task_state"))
            .join(tasks, tasks.c.id == products.c.task_id)
            .where(products.c.relative_path.in_(chunk))
            .order_by(products.c.id)
        )
        rows = connection.execute(query.with_for_update() if lock else query)
        for row in rows:  # the latest planned producer of a path wins
            found[row.relative_path] = (row.task_id, row.state == "made" and row.task_state == states.DONE)
    return found


def check_inputs(connection: Connection, plan: Plan, lock: bool = True) -> dict[str, tuple[int, bool]]:
    """Producers in the database of the inputs no task of the plan makes; :class:`ChainError` if one has none.

    An input given as a URI that no task produces is data from outside (an object in S3, a web page): it has
    no producer to wait for and is fetched when the task runs."""
    unresolved = {path for node in plan.nodes for path, _semantic in node.unresolved_inputs}
    producers = find_producers(connection, unresolved, lock) if unresolved else {}
    for node in plan.nodes:
        for path, semantic in node.unresolved_inputs:
            if path not in producers and not uris.is_uri(path):
                raise ChainError(
                    "%s: %s: field 'inputs.%s': no task produces file %r (not in this chain, nor in the database)"
                    % (plan.source, node.chain_path, semantic, path)
                )
    return producers


def create_job(connection: Connection, name: str, source: str | None) -> int:
    return connection.execute(jobs.insert().values(name=name, source=source, submitted_at=time.time())).inserted_primary_key[0]


def write_plan(connection: Connection, plan: Plan, job_id: int, max_attempts: dict[str, int | None] | None = None,
               reuse: dict[int, Any] | None = None) -> dict[int, int]:
    """Insert the plan's tasks, dependencies and planned products. Returns {node index: task id}.

    ``reuse`` ({node index: :class:`~eas_controller.store.reuse.Earlier`}, from ``submit.py --resume``) names
    the worker tasks that take an earlier run's results over instead of running: they are written ready
    with every dependency on them already satisfied, and the caller finishes them with
    :func:`eas_controller.store.reuse.take_over`. Raises :class:`ChainError` (before writing anything) when
    an input is produced by nobody.
    """
    nodes = plan.nodes
    max_attempts = max_attempts or {}
    reuse = reuse or {}
    versions = type_versions(connection)
    # the keys' rows first: a claim locks a key's row before the task rows it starts, and so does this
    limit_store.declare(connection, {node.limit_key: node.limit_max for node in nodes if node.limit_key is not None})
    producers = check_inputs(connection, plan)

    # Dependencies per node: (kind, Node or existing task id, satisfied); one row per distinct target.
    requirements: dict[int, dict] = {}
    for node in nodes:
        required: dict = {}
        for child in node.children:
            required.setdefault(("node", child.index), ("child", child.index in reuse))
        for source in node.metadata_from:
            required.setdefault(("node", source.index), ("metadata", source.index in reuse))
        for producer, _path, _semantic in node.file_dependencies:
            required.setdefault(("node", producer.index), ("file", producer.index in reuse))
        for path, _semantic in node.unresolved_inputs:
            if path in producers:  # else a URI from outside
                task_id, ready = producers[path]
                required.setdefault(("task", task_id), ("file", ready))
        requirements[node.index] = required

    now = time.time()
    ids: dict[int, int] = {}
    depth: dict[int, int] = {}
    for node in nodes:  # parents always come before their children
        depth[node.index] = depth[node.parent.index] + 1 if node.parent is not None else 0
    for level in sorted(set(depth.values())):
        level_nodes = [node for node in nodes if depth[node.index] == level]
        rows = []
        for node in level_nodes:
            unmet = sum(1 for kind, satisfied in requirements[node.index].values() if not satisfied)
            if node.is_control and node.expanded:
                state = states.RUNNING if unmet else states.READY
            else:
                state = states.WAITING if unmet else states.READY
            parent_id = ids[node.parent.index] if node.parent is not None else node.parent_task_id
            version = None if node.is_control else versions.get(node.task_type, "1")
            earlier = reuse.get(node.index)
            rows.append(
                dict(
                    job_id=job_id,
                    parent_id=parent_id,
                    name=node.name,
                    chain_path=node.chain_path[:1024],
                    task_type=node.task_type,
                    is_control=node.is_control,
                    job_name=node.job_name,
                    working_directory=node.working_directory,
                    description=json.dumps(node.description),
                    metadata=json.dumps(node.metadata),
                    state=state,
                    expansions=1 if node.expanded else 0,
                    priority=node.priority,
                    unmet_dependencies=unmet,
                    attempt_count=0,
                    max_attempts=max_attempts.get(node.task_type),
                    needs_evaluation=node.needs_evaluation,
                    type_version=version,
                    fingerprint=None if node.is_control else fingerprint(node.task_type, version, node.description),
                    reused_from_attempt_id=earlier.attempt_id if earlier is not None else None,
                    limit_key=node.limit_key,
                    created_at=now,
                    updated_at=now,
                )
            )
        for node, task_id in zip(level_nodes, insert_rows_returning_ids(connection, tasks, rows)):
            ids[node.index] = task_id

    dependency_rows = []
    for node in nodes:
        for (target_kind, target), (kind, satisfied) in requirements[node.index].items():
            dependency_rows.append(
                dict(
                    task_id=ids[node.index],
                    requires_task_id=ids[target] if target_kind == "node" else target,
                    kind=kind,
                    satisfied=satisfied,
                )
            )
    for chunk in chunks(dependency_rows):
        insert_rows(connection, task_dependencies, chunk)

    product_rows = [
        dict(task_id=ids[node.index], semantic_type=semantic, relative_path=path, state="planned")
        for node in nodes
        for semantic, path in node.outputs.items()
    ]
    for chunk in chunks(product_rows):
        insert_rows(connection, products, chunk)
    return ids
