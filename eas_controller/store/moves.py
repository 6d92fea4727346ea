"""Guarded state changes: move the rows that are in an allowed state, leave the others and say which.

Every store operation that changes a ``state`` column goes through :func:`guarded_update`. Its WHERE clause
names the states the operation may move rows from (declared with :func:`eas_controller.states.task_move`
or ``attempt_move``), so a row that some other transaction moved first is never moved again; the caller
gets back which rows moved and, for the others, the state they were found in.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.engine import chunks

#: The state reported for an id that has no row.
MISSING = "missing"


@dataclasses.dataclass
class Moved:
    """What an operation did: the ids it moved, and the ids it refused with the state each was in."""

    moved: list[int] = dataclasses.field(default_factory=list)
    refused: dict[int, str] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.moved)

    def extend(self, other: "Moved") -> "Moved":
        self.moved.extend(other.moved)
        self.refused.update(other.refused)
        return self


def current_states(connection: Connection, table: sa.Table, ids: Iterable[int], lock: bool = True,
                   owner: int | None = None) -> dict[int, str]:
    """{id: state} of the rows (locked ``FOR UPDATE`` unless told otherwise); absent ids are left out.

    With ``owner`` (attempts only) a row held by another worker is reported as ``held by worker N``."""
    found: dict[int, str] = {}
    columns = [table.c.id, table.c.state] + ([table.c.worker_id] if owner is not None else [])
    for chunk in chunks(sorted(set(ids))):
        query = sa.select(*columns).where(table.c.id.in_(chunk))
        for row in connection.execute(query.with_for_update() if lock else query):
            if owner is not None and row.worker_id != owner:
                found[row.id] = "%s, held by worker %s" % (row.state, row.worker_id)
            else:
                found[row.id] = row.state
    return found


class StaleStates(RuntimeError):
    """A caller's view of rows it had locked did not match the rows: a bug, never a race."""


def guarded_update(connection: Connection, table: sa.Table, ids: Iterable[int], sources: tuple[str, ...],
                   values: dict, current: dict[int, str] | None = None, owner: int | None = None) -> Moved:
    """``UPDATE table SET values WHERE id IN ids AND state IN sources [AND worker_id = owner]``.

    ``current`` ({id: state}) are rows the caller has already locked in this transaction (read with the
    same ``owner``); otherwise they are locked and read here. Rows in other states, or held by another
    worker, are left untouched and reported in ``refused``.
    """
    ids = sorted(set(ids))
    if not ids:
        return Moved()
    if current is None:
        current = current_states(connection, table, ids, owner=owner)
    movable = [row_id for row_id in ids if current.get(row_id) in sources]
    result = Moved(refused={row_id: current.get(row_id, MISSING) for row_id in ids if current.get(row_id) not in sources})
    statement, parameters = _update_of(table, sources, values, owner)
    for chunk in chunks(movable):
        changed = connection.execute(statement, dict(parameters, ids=chunk)).rowcount
        if changed != len(chunk):
            raise StaleStates("%s: %d of %d locked rows matched" % (table.name, changed, len(chunk)))
        result.moved.extend(chunk)
    return result


_UPDATES: dict[tuple, sa.Update] = {}


def _update_of(table: sa.Table, sources: tuple[str, ...], values: dict, owner: int | None) -> tuple[sa.Update, dict]:
    """The guarded UPDATE and its parameters (``ids`` still to add). Plain values are bound parameters, so the
    statement is built once per table, sources and columns and SQLAlchemy reuses its cache key and compiled
    form; values that are SQL expressions are part of the statement, built afresh each time."""
    plain = {column: value for column, value in values.items() if not isinstance(value, sa.ClauseElement)}
    parameters = {"v_" + column: value for column, value in plain.items()}
    if owner is not None:
        parameters["owner"] = owner
    key = (table.name, tuple(sources), tuple(sorted(plain)), owner is not None)
    statement = _UPDATES.get(key) if len(plain) == len(values) else None
    if statement is None:
        statement = table.update().where(table.c.id.in_(sa.bindparam("ids", expanding=True)), table.c.state.in_(sources))
        if owner is not None:
            statement = statement.where(table.c.worker_id == sa.bindparam("owner"))
        statement = statement.values(**{column: sa.bindparam("v_" + column, type_=table.c[column].type) if column in plain
                                        else value for column, value in values.items()})
        if len(plain) == len(values):
            _UPDATES[key] = statement
    return statement, parameters
