"""Tests for the task-chain expression language: must-work forms, errors, escapes."""

import json
import math
import pickle
import time

import pytest

from eas_controller.constants import CONSTANTS_SI_TABLE, CONSTANTS_TABLE, constants, constants_si
from eas_controller.expressions import (
    ExpressionError,
    evaluate,
    evaluate_fields,
    evaluate_value,
    is_expression,
    uses_requested_metadata,
)

METADATA = {"size": 3, "size_index": 1, "cadence_index": 2, "x": 1.23456, "i": 7, "names": ["b", "a"]}
REQUESTED = {"detect": {"outcome": "PASS", "snr": 12.5}}


def run(text, metadata=METADATA, requested_metadata=REQUESTED):
    return evaluate(text, metadata, requested_metadata)


# ---------------------------------------------------------------- constants


def test_constants_are_the_seed_pipelines_figures_in_its_units():
    """Lengths in Jupiter radii, times in days, the solar system in metres: as the PLATO pipeline has them."""
    assert constants.Rearth == 0.08911486
    assert constants["Rearth"] == 0.08911486
    assert (constants.day, constants.month, constants.year) == (1, 28, 365.25)
    assert type(constants.day) is int and type(constants.phy_AU) is int
    assert constants.plato_noise == 0.000315
    assert (constants.sun_radius, constants.earth_radius, constants.jupiter_radius) == (695500e3, 6371e3, 71492e3)
    assert constants.phy_AU == 149597870700
    assert constants.Rjup == 1.0
    assert constants.Rsun == constants.sun_radius / constants.jupiter_radius
    assert math.isclose(constants.Rearth, constants.earth_radius / constants.jupiter_radius, rel_tol=1e-6)
    assert "G" not in constants and "hour" not in constants


def test_si_constants_under_their_own_name():
    assert constants_si.Rearth == 6.3781e6
    assert constants_si["Rearth"] == 6.3781e6
    assert constants_si.Rsun == 6.957e8
    assert constants_si.Rjup == 7.1492e7
    assert constants_si.AU == 1.495978707e11
    assert constants_si.day == 86400
    assert constants_si.hour == 3600
    assert constants_si.minute == 60
    assert constants_si.year == 365.25 * 86400
    assert constants_si.month == 365.25 / 12 * 86400
    assert constants_si.c == 299792458
    assert math.isclose(constants_si.pc, 3.0856775814913673e16)
    for name in constants_si:
        assert constants_si[name] > 0
    assert evaluate("(constants_si.Rearth / constants_si.Rjup)") == 6.3781e6 / 7.1492e7
    with pytest.raises(ExpressionError, match="constants_si has no entry 'Rearh'"):
        evaluate("(constants_si.Rearh)")


def test_constants_are_read_only():
    for table in (constants, constants_si):
        with pytest.raises(AttributeError):
            table.Rearth = 1
        with pytest.raises(TypeError):
            table["Rearth"] = 1
        with pytest.raises(AttributeError):
            table.no_such_constant
    assert constants.Rearth == 0.08911486 and constants_si.Rearth == 6.3781e6


def test_constants_table_documents_every_constant():
    for table, rows in ((constants, CONSTANTS_TABLE), (constants_si, CONSTANTS_SI_TABLE)):
        assert [row[0] for row in rows] == list(table)
        for name, value, unit, description in rows:
            assert table[name] == value and unit and description


# ---------------------------------------------------------------- what is an expression


@pytest.mark.parametrize(
    "value, expected",
    [("(1)", True), ("'a'", True), ('"a"', True), ("hello", False), ("lc.gz", False), ("", False), (3, False), (None, False)],
)
def test_is_expression(value, expected):
    assert is_expression(value) is expected


# ---------------------------------------------------------------- forms that must work


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(constants.Rearth * 4)", 0.08911486 * 4),
        ("(constants['Rsun'] / constants.Rearth)", (695500e3 / 71492e3) / 0.08911486),
        ("(constants_si.Rearth * 4)", 6.3781e6 * 4),
        ("(metadata['size'])", 3),
        ("'lc_{size_index}_{cadence_index}.gz'.format(**metadata)", "lc_1_2.gz"),
        ("(requested_metadata['detect']['outcome'] == 'PASS')", True),
        ("('%.3f' % metadata['x'])", "1.235"),
        ("'{}_{}'.format(1, 2)", "1_2"),
        ("'{:.3f}'.format(3.14159)", "3.142"),
        ("'{0:05d}'.format(42)", "00042"),
        ("'{0}-{name}'.format(1, name='b')", "1-b"),
        ("'{size}'.format_map(metadata)", "3"),
        ("'{c.Rearth:.0f}'.format(c=constants_si)", "6378100"),
        ("'{c.Rearth:.4f}'.format(c=constants)", "0.0891"),
        ("'%(size)s/%(i)d' % metadata", "3/7"),
        ("'%s_%s' % (1, 'a')", "1_a"),
        ("([1, 2, metadata['size']])", [1, 2, 3]),
        ("({'a': 1, 'b': [metadata['i']]})", {"a": 1, "b": [7]}),
        ("(1 < 2 <= 2 != 3)", True),
        ("(metadata['size'] > 2 and not metadata['i'] == 7)", False),
        ("(metadata['size'] > 5 or metadata['i'])", 7),
        ("('big' if metadata['size'] > 2 else 'small')", "big"),
        ("([i * i for i in range(4)])", [0, 1, 4, 9]),
        ("([i for i in range(10) if i % 3 == 0])", [0, 3, 6, 9]),
        ("({k: v for k, v in [('a', 1)]})", {"a": 1}),
        ("(sqrt(16) + math.sqrt(9))", 7.0),
        ("(log10(1000), math.log10(100), floor(2.5), ceil(2.5), pow(2, 3))", [3.0, 2.0, 2, 3, 8.0]),
        ("(pi == math.pi and e == math.e)", True),
        ("(round(exp(0) + sin(0) + cos(0) + tan(0) + log(1), 3))", 2.0),
        ("(abs(-2) + min(3, 4) + max([1, 5]) + len('abc') + sum([1, 2]))", 16),
        ("(int('12') + float('0.5'))", 12.5),
        ("(str(12) + 'x')", "12x"),
        ("(sorted(metadata['names']))", ["a", "b"]),
        ("(list(zip([1, 2], 'ab')))", [[1, "a"], [2, "b"]]),
        ("(dict(enumerate('ab')))", {0: "a", 1: "b"}),
        ("(tuple([1, 2]))", [1, 2]),
        ("(bool(0), True, False, None)", [False, True, False, None]),
        ("(metadata.get('missing', 'default'))", "default"),
        ("('a,b'.split(',') + ['c'])", ["a", "b", "c"]),
        ("('lc'.upper().zfill(4))", "00LC"),
        ("('-'.join(['a', 'b']))", "a-b"),
        ("(2 ** 10)", 1024),
        ("(f'{metadata[\"i\"]:03d}')", "007"),
        ('"double quoted"', "double quoted"),
    ],
)
def test_must_work_forms(text, expected):
    result = run(text)
    assert result == expected
    assert type(result) is type(expected)
    json.dumps(result)


def test_metadata_defaults_to_empty():
    assert evaluate("(len(metadata) + len(requested_metadata))") == 0


def test_results_are_copies_of_metadata():
    metadata = {"items": [1, 2]}
    result = evaluate("(metadata['items'])", metadata)
    result.append(3)
    assert metadata == {"items": [1, 2]}


def test_metadata_cannot_be_modified():
    metadata = {"items": [1, 2], "x": 1}
    for text in ("(metadata.pop('x'))", "(metadata['items'].append(3))", "(metadata.update({'x': 2}))"):
        with pytest.raises(ExpressionError, match="not available"):
            evaluate(text, metadata)
    assert metadata == {"items": [1, 2], "x": 1}


def test_constants_object_is_not_a_result():
    with pytest.raises(ExpressionError, match="constants.NAME"):
        evaluate("(constants)")
    assert evaluate("(dict(constants))")["Rearth"] == 0.08911486
    with pytest.raises(ExpressionError, match="constants_si.NAME"):
        evaluate("(constants_si)")
    assert evaluate("(dict(constants_si))")["Rearth"] == 6.3781e6


def test_non_plain_results_refused():
    with pytest.raises(ExpressionError, match="set"):
        evaluate("({1, 2})")
    with pytest.raises(ExpressionError, match="not a plain value"):
        evaluate("(len)")


# ---------------------------------------------------------------- error messages


def test_missing_requested_metadata_key_names_the_key():
    text = "(requested_metadata['detect']['outcome'] == 'PASS')"
    with pytest.raises(ExpressionError) as caught:
        evaluate(text, METADATA, {})
    message = str(caught.value)
    assert message.startswith(f'expression "{text}": ')
    assert "missing key 'detect'" in message
    assert caught.value.expression == text
    assert caught.value.field is None


def test_missing_nested_key_names_the_key_and_container():
    with pytest.raises(ExpressionError) as caught:
        run("(requested_metadata['detect']['period'])")
    assert "missing key 'period' in requested_metadata['detect']" in str(caught.value)


def test_missing_metadata_key_names_the_key():
    with pytest.raises(ExpressionError, match="missing key 'radius' in metadata"):
        run("(metadata['radius'] * 2)")


def test_missing_format_key_names_the_key():
    with pytest.raises(ExpressionError, match="missing key 'period'"):
        run("'lc_{period}.gz'.format(**metadata)")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("(1 / 0)", "ZeroDivisionError"),
        ("(unknown_name)", "unknown name 'unknown_name'"),
        ("(open('x'))", "unknown function 'open'"),
        ("(constants.Rearh)", "constants has no entry 'Rearh'"),
        ("(metadata['names'][5])", "out of range"),
        ("('abc'", "invalid syntax"),
        ("(1 + 'a')", "TypeError"),
    ],
)
def test_errors_name_expression_and_reason(text, reason):
    with pytest.raises(ExpressionError) as caught:
        run(text)
    assert f'"{text}"' in str(caught.value)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_expression_error_pickles():
    error = ExpressionError("(x)", "unknown name 'x'", field="inputs.a")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.field == "inputs.a"


# ---------------------------------------------------------------- escapes are refused


@pytest.mark.parametrize(
    "text",
    [
        "(().__class__)",
        "(''.__class__.__mro__)",
        "(metadata.__class__)",
        "(constants.__class__)",
        "(constants._values)",
        "(math.__dict__)",
        "(metadata['x'].__class__.__bases__)",
        "('{0.__class__}'.format(1))",
        "'{0.__class__.__mro__}'.format(1)",
        "'{x.__init__}'.format(**metadata)",
        "'{x.__class__}'.format(**metadata)",
        "'{0.__globals__}'.format(len)",
        "'{a.__class__}'.format_map({'a': 1})",
        "'{0[__class__]}'.format({})",
        "'{0[__class__]}'.format(constants)",
        "'%(a)s' % {'a': ''.__class__}",
        "(f'{().__class__}')",
        "(__import__('os'))",
        "(eval('1'))",
        "(getattr(1, '__class__'))",
        "(type(1))",
        "(lambda: 1)",
        "((lambda: 1)())",
        "(x := 1)",
        "(b'x')",
        "(len.__self__)",
        "(str.format)",
        "((1).to_bytes(10, 'big'))",
    ],
)
def test_escapes_refused(text):
    with pytest.raises(ExpressionError):
        evaluate(text, {"x": 1})


def test_private_attribute_reason_is_clear():
    with pytest.raises(ExpressionError, match="'__class__' is not allowed"):
        evaluate("'{x.__class__}'.format(**metadata)", {"x": 1})


@pytest.mark.parametrize("text", ["import os", "(import os)", "__import__('os').system('true')", "x = 1", "1; 2"])
def test_statements_not_parseable(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


@pytest.mark.parametrize(
    "text",
    [
        "(2 ** 10**10)",
        "(10 ** 100000)",
        "('a' * 10**9)",
        "([0] * 10**9)",
        "([[0] * 100000] * 100000)",
        "(str([[0] * 1000] * 1000))",
        "('x'.center(10**9))",
        "('x'.ljust(10**9))",
        "('1'.zfill(10**9))",
        "(('a' * 100000).replace('a', 'aa'))",
        "(('a' * 100000).join([''] * 100000))",
        "('\\t'.expandtabs(10**9))",
        "('{:1000000000}'.format(1))",
        "('{:{}}'.format(1, 10**9))",
        "('{0:.1000000000f}'.format(1.0))",
        "(f'{1:1000000000}')",
        "('%1000000000d' % 1)",
        "('%.1000000000f' % 1.0)",
        "('%*d' % (10**9, 1))",
        "('%(a)s' * 16000 % {'a': 'x' * 100000})",
        "('{0}' * 20000).format('x' * 100000)",
        "(list(range(10**12)))",
        "(sum(range(10**15)))",
        "(sum([[0] * 100] * 10000, []))",
        "(sum([[0], [1]], []))",
        "(round(5, -10**9))",
        "([i for i in range(100000)])",
        "('a' + 'b' * 100000)",
        "(1 << 100000)",
    ],
)
def test_resource_exhaustion_refused_quickly(text):
    start = time.perf_counter()
    with pytest.raises(ExpressionError):
        evaluate(text)
    assert time.perf_counter() - start < 2.0


def test_long_but_allowed_string():
    assert len(evaluate("('a' * 100000)")) == 100000


# ---------------------------------------------------------------- evaluate_value and evaluate_fields


@pytest.mark.parametrize("value", ["hello", 3, 2.5, "lc.gz", None, True, "", "x(1)"])
def test_literals_pass_through_unchanged(value):
    assert evaluate_value(value, METADATA, REQUESTED) is value


def test_nested_lists_and_dicts_are_evaluated():
    value = {
        "lightcurve": "'lc_{i}.gz'.format(**metadata)",
        "radii": ["(constants.Rearth * 2)", 5, "plain"],
        "nested": {"deep": ["(metadata['size'] + 1)"]},
    }
    assert evaluate_value(value, METADATA, REQUESTED) == {
        "lightcurve": "lc_7.gz",
        "radii": [0.08911486 * 2, 5, "plain"],
        "nested": {"deep": [4]},
    }
    assert value["lightcurve"] == "'lc_{i}.gz'.format(**metadata)"


def test_evaluate_value_plain_expression():
    assert evaluate_value("(metadata['size'] * 2)", METADATA) == 6


def test_evaluate_fields_evaluates_all_but_skipped():
    description = {
        "task": "synthesise",
        "inputs": {"lightcurve": "'lc_{size_index}_{cadence_index}.gz'.format(**metadata)"},
        "radius": "(constants.Rearth * metadata['size'])",
        "task_list": [{"outputs": "(metadata['not_yet_known'])"}],
        "else_task_list": ["(metadata['nope'])"],
        "repeat_criterion": "(requested_metadata['later']['outcome'] == 'PASS')",
    }
    result = evaluate_fields(description, METADATA, REQUESTED)
    assert result["task"] == "synthesise"
    assert result["inputs"] == {"lightcurve": "lc_1_2.gz"}
    assert result["radius"] == 0.08911486 * 3
    for key in ("task_list", "else_task_list", "repeat_criterion"):
        assert result[key] is description[key]
    assert result is not description


def test_evaluate_fields_error_names_field_path():
    description = {"inputs": {"lightcurve": "'lc_{period}.gz'.format(**metadata)"}}
    with pytest.raises(ExpressionError) as caught:
        evaluate_fields(description, METADATA, REQUESTED)
    message = str(caught.value)
    assert message.startswith("field 'inputs.lightcurve': ")
    assert "\"'lc_{period}.gz'.format(**metadata)\"" in message
    assert "missing key 'period'" in message
    assert caught.value.field == "inputs.lightcurve"


def test_evaluate_fields_error_in_list_and_top_level():
    with pytest.raises(ExpressionError) as caught:
        evaluate_fields({"outputs": ["a.gz", "(metadata['nope'])"]}, METADATA)
    assert caught.value.field == "outputs[1]"
    assert str(caught.value).startswith("field 'outputs[1]': expression \"(metadata['nope'])\": missing key 'nope'")
    with pytest.raises(ExpressionError) as caught:
        evaluate_fields({"when": "(requested_metadata['detect']['outcome'])"}, METADATA, {})
    assert str(caught.value).startswith("field 'when': ")
    assert "missing key 'detect'" in str(caught.value)


def test_evaluate_fields_custom_skip():
    description = {"a": "(1 + 1)", "b": "(1 + 1)"}
    assert evaluate_fields(description, skip=("b",)) == {"a": 2, "b": "(1 + 1)"}


# ---------------------------------------------------------------- uses_requested_metadata


@pytest.mark.parametrize(
    "value, expected",
    [
        ("(requested_metadata['detect']['outcome'] == 'PASS')", True),
        ({"a": ["x", {"b": "'{}'.format(requested_metadata['t']['x'])"}]}, True),
        ("(metadata['size'])", False),
        ("'requested_metadata'", False),
        ("requested_metadata", False),
        (["plain", 3, None], False),
        ("(requested_metadata", True),
    ],
)
def test_uses_requested_metadata(value, expected):
    assert uses_requested_metadata(value) is expected


def test_evaluation_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    def work(n):
        return [evaluate("([i * metadata['m'] for i in range(50)])", {"m": n}) for _ in range(50)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(16)))
    for n, runs in enumerate(results):
        assert all(run_result == [i * n for i in range(50)] for run_result in runs)


# ---------------------------------------------------------------- speed (reported, not asserted)


def test_evaluate_speed_report():
    text = "'lc_{size_index}_{cadence_index}.gz'.format(**metadata)"
    count = 20000
    start = time.perf_counter()
    for _ in range(count):
        evaluate(text, METADATA, REQUESTED)
    per_call = (time.perf_counter() - start) / count
    print(f"\nevaluate(): {per_call * 1e6:.1f} microseconds per call for {text}")
