"""Size limits: what stops an expression from building huge strings, numbers or lists.

They stop the obvious memory and CPU blow-ups; they are not a time limit.
"""

import re

from eas_controller.expressions.errors import Refused

MAX_EXPRESSION_LENGTH = 100_000
MAX_STRING_LENGTH = 100_000
MAX_INT_BITS = 10_000
MAX_VALUE_SIZE = 1_000_000
MAX_FORMAT_WIDTH = 1_000
MAX_RANGE_LENGTH = 100_000
MAX_ROUND_DIGITS = 1_000

# ---------------------------------------------------------------- size limits


def printed_size(value, limit=MAX_VALUE_SIZE):
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


def check_size(value):
    """Refuse built values that are too big to be worth keeping."""
    kind = type(value)
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise Refused(
                f"string of {len(value)} characters is too long (limit {MAX_STRING_LENGTH})"
            )
    elif kind is int:
        if value.bit_length() > MAX_INT_BITS:
            raise Refused(f"integer is too large (limit {MAX_INT_BITS} bits)")
    elif kind in (list, tuple, dict, set, frozenset):
        if printed_size(value) > MAX_VALUE_SIZE:
            raise Refused(f"value is too large (limit about {MAX_VALUE_SIZE} characters)")


def check_length(length, what="result"):
    if length > MAX_STRING_LENGTH:
        raise Refused(f"{what} would be {length} long (limit {MAX_STRING_LENGTH})")


_SPEC_NUMBER = re.compile(r"\d+")


def check_format_spec(spec):
    for number in _SPEC_NUMBER.findall(spec):
        if int(number) > MAX_FORMAT_WIDTH:
            raise Refused(f"format width or precision {number} is too large (limit {MAX_FORMAT_WIDTH})")
