"""Output metadata of tasks (typed JSON values) and the metadata tasks ask for from their siblings."""

from __future__ import annotations

import json
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.engine import chunks
from eas_controller.database.schema import metadata_items, task_dependencies, tasks

_VALUE_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}


def encode_value(value: Any) -> tuple[str, str]:
    return _VALUE_TYPES.get(type(value), "json"), json.dumps(value)


def rows_for(task_id: int, attempt_id: int | None, items: dict) -> list[dict]:
    """The rows of a task's output metadata (typed values, JSON-encoded)."""
    rows = []
    for key, value in items.items():
        value_type, encoded = encode_value(value)
        rows.append(dict(scope="task", task_id=task_id, attempt_id=attempt_id, key=str(key)[:255], value_type=value_type,
                         value=encoded))
    return rows


def input_rows(task_id: int, attempt_id: int, fetched: dict) -> list[dict]:
    """Rows (scope ``input``) saying what an attempt fetched for each URI input: {uri, identity} (see
    :func:`inputs_fetched`; a resumed job compares them with the sources as they are now)."""
    return [dict(scope="input", task_id=task_id, attempt_id=attempt_id, key=str(semantic)[:255], value_type="json",
                 value=json.dumps(facts)) for semantic, facts in sorted(fetched.items())]


def inputs_fetched(connection: Connection, attempt_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """{attempt id: {URI: the identity of what it fetched from there}}."""
    attempt_ids = sorted(set(attempt_ids))
    result: dict[int, dict[str, str]] = {attempt_id: {} for attempt_id in attempt_ids}
    for chunk in chunks(attempt_ids):
        rows = connection.execute(sa.select(metadata_items.c.attempt_id, metadata_items.c.value)
                                  .where(metadata_items.c.attempt_id.in_(chunk), metadata_items.c.scope == "input"))
        for row in rows:
            facts = json.loads(row.value)
            result[row.attempt_id][facts["uri"]] = facts["identity"]
    return result


def insert_rows(connection: Connection, rows: list[dict]) -> None:
    if rows:
        connection.execute(metadata_items.insert(), rows)


def clear(connection: Connection, task_ids: list[int]) -> None:
    """Remove what earlier attempts of the tasks wrote as output metadata."""
    for chunk in chunks(task_ids):
        connection.execute(metadata_items.delete().where(metadata_items.c.task_id.in_(chunk),
                                                         metadata_items.c.scope == "task"))


def output_of(connection: Connection, task_ids: Iterable[int]) -> dict[int, dict]:
    """{task id: {key: value}} of the tasks' output metadata."""
    task_ids = list(task_ids)
    result: dict[int, dict] = {task_id: {} for task_id in task_ids}
    for chunk in chunks(task_ids):
        rows = connection.execute(sa.select(metadata_items.c.task_id, metadata_items.c.key, metadata_items.c.value)
                                  .where(metadata_items.c.task_id.in_(chunk), metadata_items.c.scope == "task"))
        for row in rows:
            result[row.task_id][row.key] = json.loads(row.value)
    return result


def requested(connection: Connection, task_id: int) -> dict[str, dict]:
    """What ``requires_metadata_from`` asked for: {sibling name: its output metadata}."""
    return requested_of(connection, [task_id])[task_id]


def requested_of(connection: Connection, task_ids: list[int]) -> dict[int, dict[str, dict]]:
    """:func:`requested` for several tasks in one query (a worker claiming a batch)."""
    deps = task_dependencies
    result: dict[int, dict[str, dict]] = {task_id: {} for task_id in task_ids}
    if not task_ids:
        return result
    sources = []
    for chunk in chunks(task_ids):
        sources.extend(connection.execute(
            sa.select(deps.c.task_id.label("dependant"), tasks.c.id, tasks.c.name)
            .join(deps, deps.c.requires_task_id == tasks.c.id)
            .where(deps.c.task_id.in_(chunk), deps.c.kind == "metadata")
        ).all())
    if sources:
        values = output_of(connection, {row.id for row in sources})
        for row in sources:
            result[row.dependant][row.name] = values[row.id]
    return result


def latest_children(connection: Connection, parent_id: int, names: Iterable[str]) -> dict[str, dict]:
    """For a do-while: output metadata of the named children from the most recent pass."""
    names = list(names)
    if not names:
        return {}
    rows = connection.execute(sa.select(tasks.c.id, tasks.c.name).where(tasks.c.parent_id == parent_id,
                                                                       tasks.c.name.in_(names)).order_by(tasks.c.id)).all()
    latest = {row.name: row.id for row in rows}  # later ids overwrite earlier passes
    values = output_of(connection, latest.values())
    return {name: values[task_id] for name, task_id in latest.items()}
