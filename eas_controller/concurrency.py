"""Concurrency limits by key: what ``concurrency_limit: {key: <expression>, max: N}`` means and how it is checked.

A task type in the registry (or one task in a chain) may declare that at most ``max`` attempts of tasks with
the same *key* run at once, across every worker and both queues. The key is a constant string or an
expression of the project's language, evaluated once when the task is created (at submission, or when the
scheduler expands a loop at run time); without one, the key is the task type's name. The result is stored
on the task row; the claim that starts an attempt counts the running attempts of that key under a lock on
the key's row (:mod:`eas_controller.store.limits`).

Nothing here touches the database: these are the parsing and evaluation rules shared by the registry and
the chains.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eas_controller import expressions
from eas_controller.expressions import ExpressionError

FIELD = "concurrency_limit"
FIELDS = ("key", "max")
#: characters a key may have (the column that holds it)
MAX_KEY_LENGTH = 255


class LimitError(ValueError):
    """A ``concurrency_limit`` is malformed; the message names the field (``concurrency_limit.max``...)."""


@dataclasses.dataclass(frozen=True)
class Limit:
    key: str | None  # a constant, an expression, or None (the task type's name)
    max: int


def parse_limit(value: Any) -> Limit:
    """Check the shape of a declared limit (before any evaluation); raises :class:`LimitError`."""
    if not isinstance(value, dict):
        raise LimitError("field '%s' must be a mapping like {key: ..., max: 2}, not %r" % (FIELD, value))
    unknown = sorted(str(name) for name in set(value) - set(FIELDS))
    if unknown:
        raise LimitError("field '%s' has unknown field(s) %s; allowed: key, max" % (FIELD, ", ".join(map(repr, unknown))))
    if "max" not in value:
        raise LimitError("field '%s.max' is missing: how many attempts with the same key may run at once" % FIELD)
    limit = value["max"]
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or limit >= 2**31:
        raise LimitError("field '%s.max' must be a positive whole number, not %r" % (FIELD, limit))
    key = value.get("key")
    if key is not None and not isinstance(key, str):
        raise LimitError("field '%s.key' must be a string (a constant or an expression), not %r" % (FIELD, key))
    if isinstance(key, str):
        if not key.strip():
            raise LimitError("field '%s.key' must not be empty" % FIELD)
        if expressions.is_expression(key):
            check_syntax(key)
        else:
            check_key(key)
    return Limit(key=key, max=limit)


def check_syntax(text: str) -> None:
    """Parse an expression without evaluating it (the registry is loaded before any task exists)."""
    try:
        expressions.check_syntax(text)
    except ExpressionError as error:
        raise LimitError("field '%s.key': %s" % (FIELD, error)) from None


def check_key(key: str) -> str:
    if not key.strip():
        raise LimitError("field '%s.key' gives an empty key" % FIELD)
    if len(key) > MAX_KEY_LENGTH:
        raise LimitError("field '%s.key' gives a key of %d characters; at most %d are allowed"
                         % (FIELD, len(key), MAX_KEY_LENGTH))
    return key


def evaluate_key(limit: Limit, task_type: str, metadata: dict, description: dict) -> str:
    """The key of one task: ``limit.key`` evaluated with ``metadata`` = the task's inherited metadata on top
    of its own evaluated fields (so ``metadata['star']`` reads a loop value or a field of the task), or the
    task type's name when the limit names no key. Numbers become strings; anything else is refused."""
    if limit.key is None:
        return task_type
    if not expressions.is_expression(limit.key):
        return check_key(limit.key)
    names = {name: value for name, value in description.items() if isinstance(name, str)}
    names.update(metadata)
    try:
        key = expressions.evaluate(limit.key, names)
    except ExpressionError as error:
        raise LimitError("field '%s.key': %s" % (FIELD, error)) from None
    if isinstance(key, bool) or not isinstance(key, (str, int, float)):
        raise LimitError("field '%s.key' must give a string, not %r" % (FIELD, key))
    return check_key(str(key))
