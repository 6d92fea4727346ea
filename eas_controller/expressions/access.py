"""What an expression may read and build: attributes, methods, str.format and % formatting.

Format fields follow the same attribute rules and size limits as the expression itself, so
``'{0.__class__}'.format(x)`` is refused like ``x.__class__``.
"""

import _string
import functools
import math
import re
import string
from collections.abc import Mapping

from eas_controller.constants import Constants, ReadOnlyMapping
from eas_controller.expressions.errors import Refused
from eas_controller.expressions.limits import (
    MAX_FORMAT_WIDTH,
    MAX_STRING_LENGTH,
    MAX_VALUE_SIZE,
    check_format_spec,
    check_length,
    printed_size,
)


class Namespace(ReadOnlyMapping):
    """Read-only group of names reachable as attributes, such as ``math``."""

    __slots__ = ("_label", "_values")

    def __init__(self, label, values):
        self._label = label
        self._values = dict(values)

    def __repr__(self):
        return f"<{self._label}>"


MATH_NAMES = (
    "acos asin atan atan2 ceil cos degrees e exp fabs floor hypot inf isclose "
    "isfinite isinf isnan log log10 log2 nan pi pow radians sin sqrt tan tau"
).split()
BARE_MATH_FUNCTIONS = "sqrt log log10 exp sin cos tan floor ceil pow".split()

math_namespace = Namespace("math", {name: getattr(math, name) for name in MATH_NAMES})

# Only methods that neither mutate their object nor escape the sandbox.
ALLOWED_METHODS = {
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

# ---------------------------------------------------------------- attributes and formatting


def refuse_private(name):
    if name.startswith("_"):
        raise Refused(f"attribute {name!r} is not allowed (names starting with '_' are private)")


def get_attribute(obj, name):
    """The only way expressions (and format fields) read attributes."""
    refuse_private(name)
    if isinstance(obj, (Constants, Namespace)):
        try:
            return obj[name]
        except KeyError:
            label = obj.table_name if isinstance(obj, Constants) else repr(obj).strip("<>")
            raise Refused(f"{label} has no entry {name!r}") from None
    kind = type(obj)
    if name not in ALLOWED_METHODS.get(kind, ()):
        raise Refused(f"attribute {name!r} is not available on {kind.__name__} values")
    if kind is str and name in GUARDED_STR_METHODS:
        return functools.partial(GUARDED_STR_METHODS[name], obj)
    return getattr(obj, name)


class _SafeFormatter(string.Formatter):
    """str.format whose fields follow the sandbox's attribute and size rules."""

    def __init__(self):
        self.remaining = MAX_STRING_LENGTH

    def get_field(self, field_name, args, kwargs):
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            obj = get_attribute(obj, key) if is_attribute else obj[key]
        return obj, first

    def format_field(self, value, format_spec):
        if format_spec:
            check_format_spec(format_spec)
        text = format(value, format_spec)
        self.remaining -= len(text)
        if self.remaining < 0:
            raise Refused(f"formatted string is too long (limit {MAX_STRING_LENGTH})")
        return text


def _str_format(template, *args, **kwargs):
    return _SafeFormatter().vformat(template, args, kwargs)


def _str_format_map(template, mapping):
    return _SafeFormatter().vformat(template, (), mapping)


def _str_pad(method):
    def padded(text, width, *args):
        check_length(width, "padded string")
        return method(text, width, *args)

    return padded


def _str_expandtabs(text, tabsize=8):
    check_length(len(text) + text.count("\t") * max(tabsize, 0))
    return text.expandtabs(tabsize)


def _str_replace(text, old, new, count=-1):
    occurrences = text.count(old) if old else len(text) + 1
    if count >= 0:
        occurrences = min(occurrences, count)
    check_length(len(text) + occurrences * (len(new) - len(old)))
    return text.replace(old, new, count)


def _str_join(separator, iterable):
    items = list(iterable)
    pieces = sum(len(item) for item in items if isinstance(item, str))
    check_length(pieces + len(separator) * max(len(items) - 1, 0))
    return separator.join(items)


def _str_translate(text, table):
    if not isinstance(table, dict):
        raise Refused("str.translate needs a dict, as made by str.maketrans")
    longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
    check_length(len(text) * max(longest, 1))
    return text.translate(table)


GUARDED_STR_METHODS = {
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


def percent_format(template, values):
    """``template % values``, refusing results that would be huge."""
    fields = _PERCENT_FIELD.findall(template)
    estimate = len(template)
    for _key, width, precision in fields:
        for number in (width, precision):
            if number == "*":
                raise Refused("'*' widths are not supported in % formatting")
            if number and int(number) > MAX_FORMAT_WIDTH:
                raise Refused(
                    f"format width or precision {number} is too large (limit {MAX_FORMAT_WIDTH})"
                )
        estimate += int(width or 0) + int(precision or 0) + _PERCENT_FIELD_ALLOWANCE
    if isinstance(values, tuple):
        estimate += sum(printed_size(value) for value in values)
    elif isinstance(values, Mapping) and any(key for key, _w, _p in fields):
        estimate += sum(printed_size(values.get(key)) for key, _w, _p in fields if key)
    else:
        estimate += printed_size(values) * len(fields)
    if estimate > MAX_VALUE_SIZE:
        raise Refused(f"% formatting result would be too long (limit {MAX_STRING_LENGTH})")
    return template % values
