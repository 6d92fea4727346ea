"""Sandboxed expression language for task chains.

Task chains carry small computations: an output file name built from the
task's metadata, a radius given as ``constants.Rearth * 2``, a condition on
the outcome of an earlier task.  Chains are written by users, so their text
must never be executed as Python.  Expressions are parsed with ``ast`` and
walked by a restricted ``simpleeval`` evaluator that only knows the names
below and a short list of safe operations.

Rules:

* A *string* value starting with ``(``, ``'`` or ``"`` is an expression;
  any other string, and every non-string value, is a literal.
* Names: ``constants``, ``metadata`` (dict), ``requested_metadata`` (dict of
  dicts, keyed by task name), ``True``/``False``/``None``, the functions
  abs, min, max, round, int, float, str, len, range, sum, sorted, list,
  dict, tuple, set, bool, zip, enumerate, and ``math`` plus the bare names
  sqrt, log, log10, exp, sin, cos, tan, pi, e, floor, ceil, pow
  (``pow`` is ``math.pow``: float only).
* Attribute access is limited to the entries of ``constants`` and ``math``
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
  the caller's metadata objects.  Anything else (a set, a function, the
  ``constants`` object itself) is refused with ExpressionError; use
  ``constants.NAME`` or ``dict(constants)`` instead.
"""

import _string
import ast
import functools
import math
import re
import string
import threading
from collections.abc import Mapping

from simpleeval import (
    DEFAULT_OPERATORS,
    InvalidExpression,
    EvalWithCompoundTypes,
    safe_lshift,
    safe_rshift,
)

from eas_controller.constants import Constants, constants

MAX_EXPRESSION_LENGTH = 100_000
MAX_STRING_LENGTH = 100_000
MAX_INT_BITS = 10_000
MAX_VALUE_SIZE = 1_000_000
MAX_FORMAT_WIDTH = 1_000
MAX_RANGE_LENGTH = 100_000
MAX_ROUND_DIGITS = 1_000

DEFAULT_SKIPPED_FIELDS = ("task_list", "else_task_list", "repeat_criterion")


class ExpressionError(ValueError):
    """An expression could not be evaluated; says which one, why, and where."""

    def __init__(self, expression, reason, field=None):
        super().__init__(expression, reason, field)
        self.expression = expression
        self.reason = reason
        self.field = field

    def __str__(self):
        message = f'expression "{self.expression}": {self.reason}'
        if self.field is not None:
            message = f"field '{self.field}': {message}"
        return message


class _Refused(Exception):
    """Raised inside the evaluator; becomes the reason of an ExpressionError."""


class _Namespace(Mapping):
    """Read-only group of names reachable as attributes, such as ``math``."""

    def __init__(self, label, values):
        self._label = label
        self._values = dict(values)

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f"<{self._label}>"


_MATH_NAMES = (
    "acos asin atan atan2 ceil cos degrees e exp fabs floor hypot inf isclose "
    "isfinite isinf isnan log log10 log2 nan pi pow radians sin sqrt tan tau"
).split()
_BARE_MATH_FUNCTIONS = "sqrt log log10 exp sin cos tan floor ceil pow".split()

math_namespace = _Namespace("math", {name: getattr(math, name) for name in _MATH_NAMES})

# Only methods that neither mutate their object nor escape the sandbox.
_ALLOWED_METHODS = {
    str: frozenset(
        "capitalize casefold center count endswith expandtabs find format format_map "
        "index isalnum isalpha isascii isdecimal isdigit isidentifier islower isnumeric "
        "isprintable isspace istitle isupper join ljust lower lstrip maketrans partition "
        "removeprefix removesuffix replace rfind rindex rjust rpartition rsplit rstrip "
        "split splitlines startswith strip swapcase title translate upper zfill".split()
    ),
    int: frozenset("bit_length conjugate denominator imag numerator real".split()),
    bool: frozenset("bit_length conjugate denominator imag numerator real".split()),
    float: frozenset("as_integer_ratio conjugate hex imag is_integer real".split()),
    list: frozenset(("copy", "count", "index")),
    tuple: frozenset(("count", "index")),
    dict: frozenset(("copy", "get", "items", "keys", "values")),
}


# ---------------------------------------------------------------- size limits


def _printed_size(value, limit=MAX_VALUE_SIZE):
    """Approximate length of repr(value); stops counting once past limit."""
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str:
            total += len(item) + 2
        elif kind is int:
            total += item.bit_length() // 3 + 1
        elif kind in (list, tuple, set, frozenset):
            total += 2 + 2 * len(item)
            pending.extend(item)
        elif kind is dict:
            total += 2 + 4 * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        else:
            total += 24
        if total > limit:
            break
    return total


def _check_size(value):
    """Refuse built values that are too big to be worth keeping."""
    kind = type(value)
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise _Refused(
                f"string of {len(value)} characters is too long (limit {MAX_STRING_LENGTH})"
            )
    elif kind is int:
        if value.bit_length() > MAX_INT_BITS:
            raise _Refused(f"integer is too large (limit {MAX_INT_BITS} bits)")
    elif kind in (list, tuple, dict, set, frozenset):
        if _printed_size(value) > MAX_VALUE_SIZE:
            raise _Refused(f"value is too large (limit about {MAX_VALUE_SIZE} characters)")


def _check_length(length, what="result"):
    if length > MAX_STRING_LENGTH:
        raise _Refused(f"{what} would be {length} long (limit {MAX_STRING_LENGTH})")


_SPEC_NUMBER = re.compile(r"\d+")


def _check_format_spec(spec):
    for number in _SPEC_NUMBER.findall(spec):
        if int(number) > MAX_FORMAT_WIDTH:
            raise _Refused(f"format width or precision {number} is too large (limit {MAX_FORMAT_WIDTH})")


# ---------------------------------------------------------------- attributes and formatting


def _refuse_private(name):
    if name.startswith("_"):
        raise _Refused(f"attribute {name!r} is not allowed (names starting with '_' are private)")


def _get_attribute(obj, name):
    """The only way expressions (and format fields) read attributes."""
    _refuse_private(name)
    if isinstance(obj, (Constants, _Namespace)):
        try:
            return obj[name]
        except KeyError:
            label = "constants" if isinstance(obj, Constants) else repr(obj).strip("<>")
            raise _Refused(f"{label} has no entry {name!r}") from None
    kind = type(obj)
    if name not in _ALLOWED_METHODS.get(kind, ()):
        raise _Refused(f"attribute {name!r} is not available on {kind.__name__} values")
    if kind is str and name in _GUARDED_STR_METHODS:
        return functools.partial(_GUARDED_STR_METHODS[name], obj)
    return getattr(obj, name)


class _SafeFormatter(string.Formatter):
    """str.format whose fields follow the sandbox's attribute and size rules."""

    def __init__(self):
        self.remaining = MAX_STRING_LENGTH

    def get_field(self, field_name, args, kwargs):
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            obj = _get_attribute(obj, key) if is_attribute else obj[key]
        return obj, first

    def format_field(self, value, format_spec):
        if format_spec:
            _check_format_spec(format_spec)
        text = format(value, format_spec)
        self.remaining -= len(text)
        if self.remaining < 0:
            raise _Refused(f"formatted string is too long (limit {MAX_STRING_LENGTH})")
        return text


def _str_format(template, *args, **kwargs):
    return _SafeFormatter().vformat(template, args, kwargs)


def _str_format_map(template, mapping):
    return _SafeFormatter().vformat(template, (), mapping)


def _str_pad(method):
    def padded(text, width, *args):
        _check_length(width, "padded string")
        return method(text, width, *args)

    return padded


def _str_expandtabs(text, tabsize=8):
    _check_length(len(text) + text.count("\t") * max(tabsize, 0))
    return text.expandtabs(tabsize)


def _str_replace(text, old, new, count=-1):
    occurrences = text.count(old) if old else len(text) + 1
    if count >= 0:
        occurrences = min(occurrences, count)
    _check_length(len(text) + occurrences * (len(new) - len(old)))
    return text.replace(old, new, count)


def _str_join(separator, iterable):
    items = list(iterable)
    pieces = sum(len(item) for item in items if isinstance(item, str))
    _check_length(pieces + len(separator) * max(len(items) - 1, 0))
    return separator.join(items)


def _str_translate(text, table):
    if not isinstance(table, dict):
        raise _Refused("str.translate needs a dict, as made by str.maketrans")
    longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
    _check_length(len(text) * max(longest, 1))
    return text.translate(table)


_GUARDED_STR_METHODS = {
    "center": _str_pad(str.center),
    "ljust": _str_pad(str.ljust),
    "rjust": _str_pad(str.rjust),
    "zfill": _str_pad(str.zfill),
    "expandtabs": _str_expandtabs,
    "replace": _str_replace,
    "join": _str_join,
    "translate": _str_translate,
    "format": _str_format,
    "format_map": _str_format_map,
}

# %-conversions: optional (key), flags, width, precision.  '%%' is counted too,
# which only makes the size estimate a little generous.
_PERCENT_FIELD = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_PERCENT_FIELD_ALLOWANCE = 400  # room for a float such as '%f' % 1e308


def _percent_format(template, values):
    """``template % values``, refusing results that would be huge."""
    fields = _PERCENT_FIELD.findall(template)
    estimate = len(template)
    for _key, width, precision in fields:
        for number in (width, precision):
            if number == "*":
                raise _Refused("'*' widths are not supported in % formatting")
            if number and int(number) > MAX_FORMAT_WIDTH:
                raise _Refused(
                    f"format width or precision {number} is too large (limit {MAX_FORMAT_WIDTH})"
                )
        estimate += int(width or 0) + int(precision or 0) + _PERCENT_FIELD_ALLOWANCE
    if isinstance(values, tuple):
        estimate += sum(_printed_size(value) for value in values)
    elif isinstance(values, Mapping) and any(key for key, _w, _p in fields):
        estimate += sum(_printed_size(values.get(key)) for key, _w, _p in fields if key)
    else:
        estimate += _printed_size(values) * len(fields)
    if estimate > MAX_VALUE_SIZE:
        raise _Refused(f"% formatting result would be too long (limit {MAX_STRING_LENGTH})")
    return template % values


# ---------------------------------------------------------------- operators and functions


def _power(base, exponent):
    if type(base) in (int, bool) and type(exponent) in (int, bool) and exponent > 0 and abs(base) > 1:
        if exponent > MAX_INT_BITS or (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise _Refused(f"power with exponent {exponent} is too large (limit {MAX_INT_BITS} bits)")
    return base**exponent


def _multiply(left, right):
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
            _check_length(len(sequence) * count, "repetition")
    return left * right


def _add(left, right):
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _check_length(len(left) + len(right), "concatenation")
    return left + right


def _modulo(left, right):
    if isinstance(left, str):
        return _percent_format(left, right)
    return left % right


def _range(*args):
    numbers = range(*args)
    try:
        length = len(numbers)
    except OverflowError:
        length = MAX_RANGE_LENGTH + 1
    if length > MAX_RANGE_LENGTH:
        raise _Refused(f"range is too long (limit {MAX_RANGE_LENGTH} items)")
    return numbers


def _round(number, ndigits=None):
    if ndigits is None:
        return round(number)
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise _Refused(f"round() digits must be within +-{MAX_ROUND_DIGITS}")
    return round(number, ndigits)


def _sum(iterable, start=0):
    """Numbers only: summing lists or strings is quadratic."""
    if type(start) not in (int, float, bool):
        raise _Refused("sum() only adds numbers")
    return sum(iterable, start)


_OPERATORS = dict(DEFAULT_OPERATORS)
_OPERATORS.update(
    {
        ast.Add: _add,
        ast.Mult: _multiply,
        ast.Pow: _power,
        ast.Mod: _modulo,
        ast.LShift: safe_lshift,
        ast.RShift: safe_rshift,
    }
)

_FUNCTIONS = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": _round,
    "int": int,
    "float": float,
    "str": str,
    "len": len,
    "range": _range,
    "sum": _sum,
    "sorted": sorted,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "bool": bool,
    "zip": zip,
    "enumerate": enumerate,
}
_FUNCTIONS.update((name, getattr(math, name)) for name in _BARE_MATH_FUNCTIONS)

_BASE_NAMES = {
    "True": True,
    "False": False,
    "None": None,
    "constants": constants,
    "math": math_namespace,
    "pi": math.pi,
    "e": math.e,
}

# Nodes whose result is newly built and therefore size-checked; names,
# subscripts and attributes only hand back existing (caller's) values.
_BUILDING_NODES = frozenset(
    (
        ast.BinOp,
        ast.UnaryOp,
        ast.Call,
        ast.List,
        ast.Tuple,
        ast.Dict,
        ast.Set,
        ast.ListComp,
        ast.DictComp,
        ast.GeneratorExp,
        ast.JoinedStr,
        ast.FormattedValue,
    )
)

_FORBIDDEN_NODE_NAMES = {
    ast.Lambda: "lambda expressions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Starred: "starred expressions outside calls and lists",
    ast.SetComp: "set comprehensions",
}

_CONVERSIONS = {-1: None, ord("s"): str, ord("r"): repr, ord("a"): ascii}


class _Evaluator(EvalWithCompoundTypes):
    """simpleeval evaluator with this module's names, rules and limits."""

    def __init__(self):
        super().__init__(operators=_OPERATORS, functions=dict(_FUNCTIONS), names={})

    def _eval(self, node):
        try:
            handler = self.nodes[type(node)]
        except KeyError:
            what = _FORBIDDEN_NODE_NAMES.get(type(node), type(node).__name__)
            raise _Refused(f"{what} not allowed") from None
        result = handler(node)
        if type(node) in _BUILDING_NODES:
            _check_size(result)
        return result

    def _eval_constant(self, node):
        if isinstance(node.value, (bytes, bytearray)):
            raise _Refused("bytes literals are not allowed")
        return super()._eval_constant(node)

    def _eval_name(self, node):
        try:
            return self.names[node.id]
        except KeyError:
            pass
        try:
            return self.functions[node.id]
        except KeyError:
            raise _Refused(f"unknown name {node.id!r}") from None

    def _eval_attribute(self, node):
        _refuse_private(node.attr)  # before evaluating anything
        return _get_attribute(self._eval(node.value), node.attr)

    def _eval_subscript(self, node):
        container = self._eval(node.value)
        key = self._eval(node.slice)
        try:
            return container[key]
        except KeyError:
            raise _Refused(f"missing key {key!r} in {ast.unparse(node.value)}") from None
        except IndexError:
            raise _Refused(f"index {key!r} is out of range for {ast.unparse(node.value)}") from None

    def _eval_call(self, node):
        if isinstance(node.func, ast.Name):
            try:
                function = self.functions[node.func.id]
            except KeyError:
                raise _Refused(f"unknown function {node.func.id!r}") from None
        elif isinstance(node.func, ast.Attribute):
            function = self._eval(node.func)
        else:
            raise _Refused("only named functions and methods can be called")
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                args.extend(self._eval(arg.value))
            else:
                args.append(self._eval(arg))
        kwargs = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                mapping = self._eval(keyword.value)
                if not isinstance(mapping, Mapping):
                    raise _Refused("** needs a dict")
                kwargs.update(mapping)
            else:
                kwargs[keyword.arg] = self._eval(keyword.value)
        return function(*args, **kwargs)

    def _eval_formattedvalue(self, node):
        value = self._eval(node.value)
        convert = _CONVERSIONS.get(node.conversion)
        if convert is not None:
            value = convert(value)
        spec = self._eval(node.format_spec) if node.format_spec else ""
        if spec:
            _check_format_spec(spec)
        return format(value, spec)


_local = threading.local()


def _evaluator():
    evaluator = getattr(_local, "evaluator", None)
    if evaluator is None:
        evaluator = _local.evaluator = _Evaluator()
    return evaluator


@functools.lru_cache(maxsize=4096)
def _parse(text):
    """Parse once: chains evaluate the same few texts many thousands of times."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise _Refused(f"expression is too long (limit {MAX_EXPRESSION_LENGTH} characters)")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        detail = "" if error.msg == "invalid syntax" else f": {error.msg}"
        raise _Refused(f"invalid syntax{detail}") from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise _Refused(f"cannot parse ({error})") from None


@functools.lru_cache(maxsize=4096)
def _names_used(text):
    return frozenset(node.id for node in ast.walk(_parse(text)) if isinstance(node, ast.Name))


_PLAIN_SCALARS = (str, int, float, bool, type(None))
_LIST_LIKE = (list, tuple, range, type({}.keys()), type({}.values()), type({}.items()))


def _to_plain(value):
    """Copy the result into plain JSON-friendly values, or refuse it."""
    if type(value) in _PLAIN_SCALARS:
        return value
    if isinstance(value, _LIST_LIKE):
        return [_to_plain(item) for item in value]
    if type(value) is dict:
        plain = {}
        for key, item in value.items():
            if type(key) not in _PLAIN_SCALARS:
                raise _Refused(f"dict key of type {type(key).__name__} is not a plain value")
            plain[key] = _to_plain(item)
        return plain
    if value is constants:
        raise _Refused("'constants' itself is not a value; use constants.NAME or dict(constants)")
    raise _Refused(f"result of type {type(value).__name__} is not a plain value")


# ---------------------------------------------------------------- public API


def is_expression(value):
    """True for strings that start with '(', a single quote or a double quote."""
    return isinstance(value, str) and value.startswith(("(", "'", '"'))


def evaluate(text, metadata=None, requested_metadata=None):
    """Evaluate expression text; raise ExpressionError naming text and reason."""
    if not isinstance(text, str):
        raise TypeError(f"expression text must be a string, not {type(text).__name__}")
    try:
        tree = _parse(text)
        evaluator = _evaluator()
        names = dict(_BASE_NAMES)
        names["metadata"] = {} if metadata is None else metadata
        names["requested_metadata"] = {} if requested_metadata is None else requested_metadata
        evaluator.names = names
        try:
            return _to_plain(evaluator.eval(text, previously_parsed=tree))
        finally:
            evaluator.names = {}
    except _Refused as error:
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
            return "requested_metadata" in _names_used(value)
        except _Refused:
            return "requested_metadata" in value
    if isinstance(value, dict):
        return any(uses_requested_metadata(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(uses_requested_metadata(item) for item in value)
    return False
