"""Resuming a job: what earlier runs of it left behind, and taking a succeeded task's results over.

The reads find, for a resubmitted chain, the earlier task at the same place in the same job (the latest
``done`` worker task with the same job name and chain path), the attempt that made its results, the md5 of
the product versions it read and of the ones it made. :func:`take_over` finishes a task that
``submit.py --resume`` created in place of running it: its outputs get copies of the earlier product
versions, its output metadata a copy of the earlier task's, and it moves ``ready -> done`` (a legal move:
the same one an empty control task makes) without any attempt of its own.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.database.dialects import insert_rows_returning_ids
from eas_controller.database.engine import chunks
from eas_controller.database.schema import (
    attempts,
    jobs,
    metadata_items,
    product_versions,
    products,
    task_dependencies,
    tasks,
)
from eas_controller.store.moves import Moved, guarded_update
from eas_controller.store.plans import find_producers

#: A task created to take an earlier attempt's results over is finished at once.
REUSE_FROM = states.task_move(states.READY, states.DONE)


@dataclasses.dataclass
class Earlier:
    """The latest finished run of one task of a job, and where its results came from."""

    task_id: int
    job_id: int
    chain_path: str
    task_type: str
    type_version: str
    job_name: str
    working_directory: str
    description: dict
    fingerprint: str | None
    attempt_id: int | None = None  # the succeeded attempt that made its products (maybe another task's)
    attempt_number: int | None = None
    attempt_task_id: int | None = None


def job_names(connection: Connection) -> list[str]:
    """The names of the jobs in the database, sorted."""
    return sorted(connection.execute(sa.select(jobs.c.name).distinct()).scalars())


def earlier_tasks(connection: Connection, job_name: str, chain_paths: Iterable[str]) -> dict[str, Earlier]:
    """{chain path: the latest ``done`` worker task at that path in a job named ``job_name``}."""
    wanted = set(chain_paths)
    job_ids = list(connection.execute(sa.select(jobs.c.id).where(jobs.c.name == job_name)).scalars())
    latest: dict[str, int] = {}
    for chunk in chunks(job_ids):
        rows = connection.execute(
            sa.select(tasks.c.id, tasks.c.chain_path)
            .where(tasks.c.job_id.in_(chunk), tasks.c.state == states.DONE, tasks.c.is_control.is_(False))
            .order_by(tasks.c.id))
        for row in rows:
            if row.chain_path in wanted:
                latest[row.chain_path] = row.id  # later ids overwrite earlier runs
    found: dict[str, Earlier] = {}
    reused_from: dict[int, int] = {}
    for chunk in chunks(sorted(latest.values())):
        rows = connection.execute(sa.select(
            tasks.c.id, tasks.c.job_id, tasks.c.chain_path, tasks.c.task_type, tasks.c.type_version, tasks.c.job_name,
            tasks.c.working_directory, tasks.c.description, tasks.c.fingerprint, tasks.c.reused_from_attempt_id,
        ).where(tasks.c.id.in_(chunk)))
        for row in rows:
            found[row.chain_path] = Earlier(
                task_id=row.id, job_id=row.job_id, chain_path=row.chain_path, task_type=row.task_type,
                type_version=row.type_version or "1", job_name=row.job_name, working_directory=row.working_directory,
                description=json.loads(row.description), fingerprint=row.fingerprint)
            if row.reused_from_attempt_id is not None:
                reused_from[row.id] = row.reused_from_attempt_id
    _add_attempts(connection, found, reused_from)
    return found


def _add_attempts(connection: Connection, found: dict[str, Earlier], reused_from: dict[int, int]) -> None:
    """The attempt each earlier task's results come from: its own latest succeeded attempt, or the one it
    took over when it was itself reused."""
    by_task = {earlier.task_id: earlier for earlier in found.values()}
    own = [task_id for task_id in by_task if task_id not in reused_from]
    for chunk in chunks(own):
        rows = connection.execute(sa.select(attempts.c.id, attempts.c.task_id, attempts.c.number)
                                  .where(attempts.c.task_id.in_(chunk), attempts.c.state == states.A_SUCCEEDED)
                                  .order_by(attempts.c.id))
        for row in rows:
            earlier = by_task[row.task_id]
            earlier.attempt_id, earlier.attempt_number, earlier.attempt_task_id = row.id, row.number, row.task_id
    taken = sorted(set(reused_from.values()))
    facts = {}
    for chunk in chunks(taken):
        for row in connection.execute(sa.select(attempts.c.id, attempts.c.task_id, attempts.c.number)
                                      .where(attempts.c.id.in_(chunk))):
            facts[row.id] = row
    for task_id, attempt_id in reused_from.items():
        row = facts.get(attempt_id)
        if row is not None:
            earlier = by_task[task_id]
            earlier.attempt_id, earlier.attempt_number, earlier.attempt_task_id = row.id, row.number, row.task_id


def inputs_read(connection: Connection, task_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """{task id: {relative path: md5}}: the latest versions of the products of the tasks each task waited
    for as files (what it read: a producer is ``done`` for good before its readers start)."""
    task_ids = sorted(set(task_ids))
    result: dict[int, dict[str, str]] = {task_id: {} for task_id in task_ids}
    for chunk in chunks(task_ids):
        rows = connection.execute(
            sa.select(task_dependencies.c.task_id, products.c.relative_path, product_versions.c.md5)
            .join(products, products.c.task_id == task_dependencies.c.requires_task_id)
            .join(product_versions, product_versions.c.id == products.c.latest_version_id)
            .where(task_dependencies.c.task_id.in_(chunk), task_dependencies.c.kind == "file"))
        for row in rows:
            result[row.task_id][row.relative_path] = row.md5
    return result


def outputs_made(connection: Connection, task_ids: Iterable[int]) -> dict[int, dict[str, dict]]:
    """{task id: {relative path: its made product's latest version (path, size, md5, qc...)}}."""
    task_ids = sorted(set(task_ids))
    result: dict[int, dict[str, dict]] = {task_id: {} for task_id in task_ids}
    for chunk in chunks(task_ids):
        rows = connection.execute(
            sa.select(products.c.task_id, products.c.semantic_type, products.c.relative_path, product_versions.c.path,
                      product_versions.c.size, product_versions.c.md5, product_versions.c.qc_state,
                      product_versions.c.qc_message)
            .join(product_versions, product_versions.c.id == products.c.latest_version_id)
            .where(products.c.task_id.in_(chunk), products.c.state == "made"))
        for row in rows:
            result[row.task_id][row.relative_path] = row._asdict()
    return result


def database_inputs(connection: Connection, paths: Iterable[str]) -> dict[str, str | None]:
    """{relative path: md5 a new reader would read now} for files made by tasks already in the database
    (None while the latest producer of the path has not made it)."""
    producers = find_producers(connection, paths, lock=False)
    made = outputs_made(connection, {task_id for task_id, _ready in producers.values()})
    result: dict[str, str | None] = {}
    for path, (task_id, ready) in producers.items():
        version = made.get(task_id, {}).get(path)
        result[path] = version["md5"] if ready and version else None
    return result


def take_over(connection: Connection, pairs: list[tuple[int, Earlier]], now: float | None = None) -> Moved:
    """Finish each new task (id) with the results of its :class:`Earlier` run: copies of the earlier task's
    product versions (same file, size, md5, QC; ``attempt_id`` the attempt that made them) and output
    metadata, after moving it ``ready -> done``; a row in another state is refused and gets nothing. The new
    rows were written with ``reused_from_attempt_id`` set."""
    now = now or time.time()
    if not pairs:
        return Moved()
    moved = guarded_update(connection, tasks, [task_id for task_id, _earlier in pairs], REUSE_FROM,
                           dict(state=states.DONE, updated_at=now))
    taken = set(moved.moved)
    pairs = [(task_id, earlier) for task_id, earlier in pairs if task_id in taken]  # a refused row keeps nothing
    made = outputs_made(connection, [earlier.task_id for _task_id, earlier in pairs])
    planned: dict[tuple[int, str], int] = {}
    new_ids = [task_id for task_id, _earlier in pairs]
    for chunk in chunks(new_ids):
        for row in connection.execute(sa.select(products.c.id, products.c.task_id, products.c.relative_path)
                                      .where(products.c.task_id.in_(chunk))):
            planned[(row.task_id, row.relative_path)] = row.id
    versions, product_ids = [], []
    for task_id, earlier in pairs:
        for relative_path, version in made[earlier.task_id].items():
            product_id = planned.get((task_id, relative_path))
            if product_id is None:
                continue
            product_ids.append(product_id)
            versions.append(dict(product_id=product_id, attempt_id=earlier.attempt_id, path=version["path"],
                                 size=version["size"], md5=version["md5"], qc_state=version["qc_state"],
                                 qc_message=version["qc_message"], created_at=now))
    version_ids = insert_rows_returning_ids(connection, product_versions, versions)
    publish = [dict(product=product_id, version=version_id) for product_id, version_id in zip(product_ids, version_ids)]
    for chunk in chunks(publish):
        connection.execute(products.update().where(products.c.id == sa.bindparam("product"))
                           .values(state="made", latest_version_id=sa.bindparam("version")), chunk)
    by_old = {earlier.task_id: (task_id, earlier) for task_id, earlier in pairs}
    copies = []
    for chunk in chunks(sorted(by_old)):
        rows = connection.execute(sa.select(metadata_items.c.task_id, metadata_items.c.key, metadata_items.c.value_type,
                                            metadata_items.c.value)
                                  .where(metadata_items.c.task_id.in_(chunk), metadata_items.c.scope == "task")
                                  .order_by(metadata_items.c.id))
        for row in rows:
            task_id, earlier = by_old[row.task_id]
            copies.append(dict(scope="task", task_id=task_id, attempt_id=earlier.attempt_id, key=row.key,
                               value_type=row.value_type, value=row.value))
    for chunk in chunks(copies):
        connection.execute(metadata_items.insert(), chunk)
    return moved
