"""The public entry points: is a value an expression, evaluate one, evaluate every field of a task."""

import json

from simpleeval import InvalidExpression

from eas_controller.expressions.errors import ExpressionError, Refused
from eas_controller.expressions.randomness import UNSEEDED
from eas_controller.expressions.sandbox import BASE_NAMES, evaluator_for_thread, names_used, parse, to_plain

DEFAULT_SKIPPED_FIELDS = ("task_list", "else_task_list", "repeat_criterion")


def is_expression(value):
    """True for strings whose first non-blank character is '(', a single quote or a double quote.

    Leading blanks are allowed, as the PLATO pipeline's own evaluator strips them first.
    """
    return isinstance(value, str) and value.lstrip().startswith(("(", "'", '"'))


def evaluate(text, metadata=None, requested_metadata=None, random=None):
    """Evaluate expression text; raise ExpressionError naming text and reason.

    ``random`` is the namespace the text sees as ``random`` (see :mod:`.randomness`); by default a
    generator seeded from the operating system's entropy.
    """
    if not isinstance(text, str):
        raise TypeError(f"expression text must be a string, not {type(text).__name__}")
    try:
        tree = parse(text)
        evaluator = evaluator_for_thread()
        names = dict(BASE_NAMES)
        names["metadata"] = {} if metadata is None else metadata
        names["requested_metadata"] = {} if requested_metadata is None else requested_metadata
        if "random" in names_used(text):
            names["random"] = random if random is not None else UNSEEDED.for_scope("")
        evaluator.names = names
        try:
            return to_plain(evaluator.eval(text, previously_parsed=tree))
        finally:
            evaluator.names = {}
    except Refused as error:
        reason = str(error)
    except InvalidExpression as error:
        reason = str(error)
    except KeyError as error:
        reason = f"missing key {error.args[0]!r}" if error.args else "missing key"
    except RecursionError:
        reason = "too deeply nested"
    except Exception as error:  # anything else the user's text caused
        reason = f"{type(error).__name__}: {error}"
    raise ExpressionError(text, reason)


def check_syntax(text):
    """Parse expression text without evaluating it; raise ExpressionError if it cannot be parsed."""
    try:
        parse(text)
    except Refused as error:
        raise ExpressionError(text, str(error)) from None


def _evaluate_expression(text, metadata, requested_metadata, path, streams):
    try:
        generator = streams.for_scope(path or "") if _uses_random(text) else None
        return evaluate(text, metadata, requested_metadata, generator)
    except ExpressionError as error:
        if path is None:
            raise
        raise ExpressionError(error.expression, error.reason, field=path) from None


def _uses_random(text):
    try:
        return "random" in names_used(text)
    except Refused:
        return False  # evaluate() reports why the text cannot be parsed


def _evaluate_key(key, metadata, requested_metadata, path, streams):
    """A dict key that is an expression gives the key (a string, as JSON keys are)."""
    key_path = str(key) if path is None else f"{path}.{key}"
    value = _evaluate_expression(key, metadata, requested_metadata, key_path, streams)
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)  # what JSON makes of a number key
    raise ExpressionError(key, f"a key must be a string, not {type(value).__name__}", field=key_path)


def _evaluate_dict(value, metadata, requested_metadata, path, streams, skip=()):
    result = {}
    for key, item in value.items():
        item_path = str(key) if path is None else f"{path}.{key}"
        name = _evaluate_key(key, metadata, requested_metadata, path, streams) if is_expression(key) else key
        if name in result:
            raise ExpressionError(key, f"gives the key {name!r}, which the object already has", field=item_path)
        if name in skip:
            result[name] = item
        else:
            result[name] = _evaluate_at(item, metadata, requested_metadata, item_path, streams)
    return result


def _evaluate_at(value, metadata, requested_metadata, path, streams=UNSEEDED):
    if isinstance(value, str):
        if not is_expression(value):
            return value
        return _evaluate_expression(value, metadata, requested_metadata, path, streams)
    if isinstance(value, dict):
        return _evaluate_dict(value, metadata, requested_metadata, path, streams)
    if isinstance(value, (list, tuple)):
        prefix = "" if path is None else path
        return type(value)(
            _evaluate_at(item, metadata, requested_metadata, f"{prefix}[{index}]", streams)
            for index, item in enumerate(value)
        )
    return value


def evaluate_value(value, metadata=None, requested_metadata=None, random_streams=None):
    """Evaluate value if it is an expression, recursing into lists and dicts (keys too).

    Errors inside a list or dict carry the position in `field`
    (``'files[1]'``, ``'inputs.lightcurve'``). ``random_streams`` (a
    :class:`.randomness.RandomStreams`) gives ``random`` its generators.
    """
    return _evaluate_at(value, metadata, requested_metadata, None, random_streams or UNSEEDED)


def evaluate_fields(description, metadata=None, requested_metadata=None, skip=DEFAULT_SKIPPED_FIELDS,
                    random_streams=None):
    """New dict with every field except those in `skip` evaluated; field names that are expressions too.

    Skipped fields (nested task lists, repeat criteria) are evaluated later,
    in their own context, so they are copied unchanged.  Errors name the
    dotted field path, e.g. ``field 'inputs.lightcurve': expression ...``.
    """
    return _evaluate_dict(description, metadata, requested_metadata, None, random_streams or UNSEEDED, skip)


def uses_requested_metadata(value):
    """True if any expression in value (recursively) names requested_metadata."""
    if isinstance(value, str):
        if not is_expression(value):
            return False
        try:
            return "requested_metadata" in names_used(value)
        except Refused:
            return "requested_metadata" in value
    if isinstance(value, dict):
        return any(uses_requested_metadata(key) or uses_requested_metadata(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(uses_requested_metadata(item) for item in value)
    return False
