"""The restricted evaluator: simpleeval with this language's operators, functions, names and limits."""

import ast
import functools
import math
import re
import threading
from collections.abc import Mapping

from simpleeval import (
    DEFAULT_OPERATORS,
    EvalWithCompoundTypes,
    safe_lshift,
    safe_rshift,
)

from eas_controller.constants import Constants, constants, constants_si
from eas_controller.expressions.access import (
    BARE_MATH_FUNCTIONS,
    check_format_spec,
    get_attribute,
    math_namespace,
    percent_format,
    refuse_private,
)
from eas_controller.expressions.errors import Refused
from eas_controller.expressions.limits import (
    MAX_EXPRESSION_LENGTH,
    MAX_INT_BITS,
    MAX_RANGE_LENGTH,
    MAX_ROUND_DIGITS,
    check_length,
    check_size,
)

# ---------------------------------------------------------------- operators and functions


def _power(base, exponent):
    if type(base) in (int, bool) and type(exponent) in (int, bool) and exponent > 0 and abs(base) > 1:
        if exponent > MAX_INT_BITS or (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise Refused(f"power with exponent {exponent} is too large (limit {MAX_INT_BITS} bits)")
    return base**exponent


def _multiply(left, right):
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
            check_length(len(sequence) * count, "repetition")
    return left * right


def _add(left, right):
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        check_length(len(left) + len(right), "concatenation")
    return left + right


def _modulo(left, right):
    if isinstance(left, str):
        return percent_format(left, right)
    return left % right


def _range(*args):
    numbers = range(*args)
    try:
        length = len(numbers)
    except OverflowError:
        length = MAX_RANGE_LENGTH + 1
    if length > MAX_RANGE_LENGTH:
        raise Refused(f"range is too long (limit {MAX_RANGE_LENGTH} items)")
    return numbers


def _round(number, ndigits=None):
    if ndigits is None:
        return round(number)
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise Refused(f"round() digits must be within +-{MAX_ROUND_DIGITS}")
    return round(number, ndigits)


def _sum(iterable, start=0):
    """Numbers only: summing lists or strings is quadratic."""
    if type(start) not in (int, float, bool):
        raise Refused("sum() only adds numbers")
    return sum(iterable, start)


OPERATORS = dict(DEFAULT_OPERATORS)
OPERATORS.update(
    {
        ast.Add: _add,
        ast.Mult: _multiply,
        ast.Pow: _power,
        ast.Mod: _modulo,
        ast.LShift: safe_lshift,
        ast.RShift: safe_rshift,
    }
)

FUNCTIONS = {
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
FUNCTIONS.update((name, getattr(math, name)) for name in BARE_MATH_FUNCTIONS)

BASE_NAMES = {
    "True": True,
    "False": False,
    "None": None,
    "constants": constants,
    "constants_si": constants_si,
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


class Evaluator(EvalWithCompoundTypes):
    """simpleeval evaluator with this module's names, rules and limits."""

    def __init__(self):
        super().__init__(operators=OPERATORS, functions=dict(FUNCTIONS), names={})

    def _eval(self, node):
        try:
            handler = self.nodes[type(node)]
        except KeyError:
            what = _FORBIDDEN_NODE_NAMES.get(type(node), type(node).__name__)
            raise Refused(f"{what} not allowed") from None
        result = handler(node)
        if type(node) in _BUILDING_NODES:
            check_size(result)
        return result

    def _eval_constant(self, node):
        if isinstance(node.value, (bytes, bytearray)):
            raise Refused("bytes literals are not allowed")
        return super()._eval_constant(node)

    def _eval_name(self, node):
        try:
            return self.names[node.id]
        except KeyError:
            pass
        try:
            return self.functions[node.id]
        except KeyError:
            raise Refused(f"unknown name {node.id!r}") from None

    def _eval_attribute(self, node):
        refuse_private(node.attr)  # before evaluating anything
        return get_attribute(self._eval(node.value), node.attr)

    def _eval_subscript(self, node):
        container = self._eval(node.value)
        key = self._eval(node.slice)
        try:
            return container[key]
        except KeyError:
            raise Refused(f"missing key {key!r} in {ast.unparse(node.value)}") from None
        except IndexError:
            raise Refused(f"index {key!r} is out of range for {ast.unparse(node.value)}") from None

    def _eval_call(self, node):
        if isinstance(node.func, ast.Name):
            try:
                function = self.functions[node.func.id]
            except KeyError:
                raise Refused(f"unknown function {node.func.id!r}") from None
        elif isinstance(node.func, ast.Attribute):
            function = self._eval(node.func)
        else:
            raise Refused("only named functions and methods can be called")
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
                    raise Refused("** needs a dict")
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
            check_format_spec(spec)
        return format(value, spec)


_local = threading.local()


def evaluator_for_thread():
    evaluator = getattr(_local, "evaluator", None)
    if evaluator is None:
        evaluator = _local.evaluator = Evaluator()
    return evaluator


@functools.lru_cache(maxsize=4096)
def parse(text):
    """Parse once: chains evaluate the same few texts many thousands of times."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise Refused(f"expression is too long (limit {MAX_EXPRESSION_LENGTH} characters)")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        detail = "" if error.msg == "invalid syntax" else f": {error.msg}"
        raise Refused(f"invalid syntax{detail}") from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise Refused(f"cannot parse ({error})") from None


@functools.lru_cache(maxsize=4096)
def names_used(text):
    return frozenset(node.id for node in ast.walk(parse(text)) if isinstance(node, ast.Name))


_PLAIN_SCALARS = (str, int, float, bool, type(None))
_SURROGATE = re.compile("[\ud800-\udfff]")
_LIST_LIKE = (list, tuple, range, type({}.keys()), type({}.values()), type({}.items()))


def to_plain(value):
    """Copy the result into plain JSON-friendly values, or refuse it."""
    if type(value) in _PLAIN_SCALARS:
        if type(value) is str and _SURROGATE.search(value):
            raise Refused("the string holds a lone surrogate, which is not Unicode text")
        return value
    if isinstance(value, _LIST_LIKE):
        return [to_plain(item) for item in value]
    if type(value) is dict:
        plain = {}
        for key, item in value.items():
            if type(key) not in _PLAIN_SCALARS:
                raise Refused(f"dict key of type {type(key).__name__} is not a plain value")
            plain[key] = to_plain(item)
        return plain
    if isinstance(value, Constants):
        name = value.table_name
        raise Refused(f"'{name}' itself is not a value; use {name}.NAME or dict({name})")
    raise Refused(f"result of type {type(value).__name__} is not a plain value")
