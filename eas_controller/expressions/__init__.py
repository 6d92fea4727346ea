"""Sandboxed expression language for task chains.

Task chains carry small computations: an output file name built from the
task's metadata, a radius given as ``constants.Rearth * 2``, a condition on
the outcome of an earlier task.  Chains are written by users, so their text
must never be executed as Python.  Expressions are parsed with ``ast`` and
walked by a restricted ``simpleeval`` evaluator that only knows the names
below and a short list of safe operations.

Rules:

* A *string* value whose first non-blank character is ``(``, ``'`` or ``"``
  is an expression; any other string, and every non-string value, is a
  literal.  Dict keys are evaluated like values (as the PLATO pipeline did).
* Names: ``constants`` (the PLATO pipeline's figures and units),
  ``constants_si`` (SI), ``random`` (random, uniform, randint, gauss; see
  :mod:`.randomness`), ``metadata`` (dict), ``requested_metadata`` (dict of
  dicts, keyed by task name), ``True``/``False``/``None``, the functions
  abs, min, max, round, int, float, str, len, range, sum, sorted, list,
  dict, tuple, set, bool, zip, enumerate, and ``math`` plus the bare names
  sqrt, log, log10, exp, sin, cos, tan, pi, e, floor, ceil, pow
  (``pow`` is ``math.pow``: float only).
* Attribute access is limited to the entries of ``constants``,
  ``constants_si``, ``random`` and ``math``
  and to a whitelist of non-mutating methods of str, int, float, list,
  tuple and dict; names starting with ``_`` are always refused.
  ``str.format``/``format_map`` and the ``%`` operator are re-implemented so
  that format fields obey the same attribute rules and size limits.
* Sizes are bounded: strings (MAX_STRING_LENGTH), integers (MAX_INT_BITS),
  any built value (MAX_VALUE_SIZE, its approximate printed size), ``range``
  lengths, format widths and comprehension lengths.  These limits stop the
  obvious memory and CPU blow-ups; they are not a time limit.
* Results are plain values (str, int, float, bool, None, list, dict);
  tuples, ranges and dict views become lists, and results are copies, never
  the caller's metadata objects; strings hold no lone surrogates.  Anything
  else (a set, a function, the
  ``constants`` object itself) is refused with ExpressionError; use
  ``constants.NAME`` or ``dict(constants)`` instead.
"""

from eas_controller.expressions.access import math_namespace
from eas_controller.expressions.errors import ExpressionError
from eas_controller.expressions.evaluation import (
    DEFAULT_SKIPPED_FIELDS,
    check_syntax,
    evaluate,
    evaluate_fields,
    evaluate_value,
    is_expression,
    uses_requested_metadata,
)
from eas_controller.expressions.limits import (
    MAX_EXPRESSION_LENGTH,
    MAX_FORMAT_WIDTH,
    MAX_INT_BITS,
    MAX_RANGE_LENGTH,
    MAX_ROUND_DIGITS,
    MAX_STRING_LENGTH,
    MAX_VALUE_SIZE,
)
from eas_controller.expressions.randomness import RandomStreams

__all__ = [
    "DEFAULT_SKIPPED_FIELDS", "MAX_EXPRESSION_LENGTH", "MAX_FORMAT_WIDTH", "MAX_INT_BITS", "MAX_RANGE_LENGTH",
    "MAX_ROUND_DIGITS", "MAX_STRING_LENGTH", "MAX_VALUE_SIZE", "ExpressionError", "RandomStreams", "check_syntax", "evaluate",
    "evaluate_fields", "evaluate_value", "is_expression", "math_namespace", "uses_requested_metadata",
]
