"""The values an ``execution_for_loop`` runs over: a list, or a linear or logarithmic range."""

from __future__ import annotations

import json
import math

from eas_controller.chains.model import LOOP_FORMS, MAX_LOOP_VALUES, ChainError, json_type


def loop_values(description: dict, where: str) -> list:
    """The values of an ``execution_for_loop``. Ranges include both ends: [start, end, count]."""
    forms = [key for key in LOOP_FORMS if key in description]
    if len(forms) != 1:
        raise ChainError("%s: execution_for_loop needs exactly one of 'values', 'linear_range', 'log_range'%s"
                         % (where, "" if not forms else " (it has %s)" % " and ".join(forms)))
    form = forms[0]
    spec = description[form]
    if form == "values":
        if not isinstance(spec, list) or not spec:
            raise ChainError("%s: field 'values' must be a non-empty list, not %s" % (where, json_type(spec)
                                                                                    if spec != [] else "[]"))
        if len(spec) > MAX_LOOP_VALUES:
            raise ChainError("%s: field 'values' has more than %d entries" % (where, MAX_LOOP_VALUES))
        return list(spec)
    if not isinstance(spec, list) or len(spec) != 3:
        raise ChainError("%s: field '%s' must be [start, end, count], not %s" % (where, form, json.dumps(spec)))
    start, end, count = spec
    for label, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise ChainError("%s: field '%s': %s must be a number, not %s" % (where, form, label, _shown(value)))
    if isinstance(count, bool) or not isinstance(count, (int, float)) or not _finite(count) or int(count) != count:
        raise ChainError("%s: field '%s': count must be a whole number, not %s" % (where, form, _shown(count)))
    count = int(count)
    if count < 1:
        raise ChainError("%s: field '%s': count must be at least 1, not %d" % (where, form, count))
    if count > MAX_LOOP_VALUES:
        raise ChainError("%s: field '%s': count must be at most %d" % (where, form, MAX_LOOP_VALUES))
    if form == "log_range" and (start <= 0 or end <= 0):
        raise ChainError("%s: field 'log_range': start and end must be positive, not %r and %r" % (where, start, end))
    # The PLATO pipeline computed ranges with numpy.linspace and numpy.logspace; these are the same float
    # operations in the same order, so a chain copied from it gets the very same values.
    if form == "linear_range":
        values = _linspace(float(start), float(end), count)
    else:
        values = [10.0 ** exponent for exponent in _linspace(math.log10(start), math.log10(end), count)]
    if not all(math.isfinite(value) for value in values):
        raise ChainError("%s: field '%s': the range %s to %s in %d steps gives numbers too large to store"
                         % (where, form, _shown(start), _shown(end), count))
    return values


def _linspace(start: float, end: float, count: int) -> list[float]:
    """numpy.linspace(start, end, count): ``i * step + start``, the last value exactly ``end``."""
    if count == 1:
        return [start]
    step = (end - start) / (count - 1)
    if step == 0:
        return [start] * count
    return [i * step + start for i in range(count - 1)] + [end]


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
