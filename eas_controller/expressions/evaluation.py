"""The public entry points: is a value an expression, evaluate one, evaluate every field of a task."""

from simpleeval import InvalidExpression

from eas_controller.expressions.errors import ExpressionError, Refused
from eas_controller.expressions.sandbox import BASE_NAMES, evaluator_for_thread, names_used, parse, to_plain

DEFAULT_SKIPPED_FIELDS = ("task_list", "else_task_list", "repeat_criterion")


def is_expression(value):
    """True for strings that start with '(', a single quote or a double quote."""
    return isinstance(value, str) and value.startswith(("(", "'", '"'))


def evaluate(text, metadata=None, requested_metadata=None):
    """Evaluate expression text; raise ExpressionError naming text and reason."""
    if not isinstance(text, str):
        raise TypeError(f"expression text must be a string, not {type(text).__name__}")
    try:
        tree = parse(text)
        evaluator = evaluator_for_thread()
        names = dict(BASE_NAMES)
        names["metadata"] = {} if metadata is None else metadata
        names["requested_metadata"] = {} if requested_metadata is None else requested_metadata
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
    except Exception as error:  # anything else the user's text caused
        reason = f"{type(error).__name__}: {error}"
    raise ExpressionError(text, reason)


def _evaluate_at(value, metadata, requested_metadata, path):
    if isinstance(value, str):
        if not is_expression(value):
            return value
        try:
            return evaluate(value, metadata, requested_metadata)
        except ExpressionError as error:
            if path is None:
                raise
            raise ExpressionError(error.expression, error.reason, field=path) from None
    if isinstance(value, dict):
        return {
            key: _evaluate_at(item, metadata, requested_metadata, key if path is None else f"{path}.{key}")
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        prefix = "" if path is None else path
        return type(value)(
            _evaluate_at(item, metadata, requested_metadata, f"{prefix}[{index}]")
            for index, item in enumerate(value)
        )
    return value


def evaluate_value(value, metadata=None, requested_metadata=None):
    """Evaluate value if it is an expression, recursing into lists and dicts.

    Errors inside a list or dict carry the position in `field`
    (``'files[1]'``, ``'inputs.lightcurve'``).
    """
    return _evaluate_at(value, metadata, requested_metadata, None)


def evaluate_fields(description, metadata=None, requested_metadata=None, skip=DEFAULT_SKIPPED_FIELDS):
    """New dict with every field except those in `skip` evaluated.

    Skipped fields (nested task lists, repeat criteria) are evaluated later,
    in their own context, so they are copied unchanged.  Errors name the
    dotted field path, e.g. ``field 'inputs.lightcurve': expression ...``.
    """
    return {
        key: value if key in skip else _evaluate_at(value, metadata, requested_metadata, str(key))
        for key, value in description.items()
    }


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
        return any(uses_requested_metadata(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(uses_requested_metadata(item) for item in value)
    return False
