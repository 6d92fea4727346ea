"""Fuzzing: arbitrary chains and expression texts are accepted or refused cleanly, alike on every back end.

Every generated chain is submitted to SQLite, MariaDB and PostgreSQL in turn. It must be either accepted on
all three (and written: one job, one row per planned task) or refused on all three with the same one-line
:class:`ChainError` naming the file — never another exception, never a row written by a refusal. A few
examples go through the real ``submit.py`` as a subprocess (exit status 0, or 2 with one ``error:`` line
and no traceback). The expression evaluator gets arbitrary text and must return a plain value or raise
ExpressionError.

Examples per run: ``EAS_FUZZ_EXAMPLES`` (default 100 chains, 300 expression texts); the long run in
docs/reliability.md used ``EAS_FUZZ_EXAMPLES=10000``.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import sqlalchemy as sa
from conftest import SQL_BACKENDS, make_environment
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eas_controller.chains import ChainError
from eas_controller.database import schema
from eas_controller.expressions import ExpressionError, evaluate
from eas_controller.reports import render_plan
from eas_controller.submission import submit_chain

EXAMPLES = int(os.environ.get("EAS_FUZZ_EXAMPLES", "0") or 0)
CHAIN_EXAMPLES = EXAMPLES or 100
EXPRESSION_EXAMPLES = EXAMPLES or 300
SCRIPT_EXAMPLES = 4
SOURCE = "fuzz.json"
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

# -- strategies ------------------------------------------------------------------------------------

#: every code point, lone surrogates and control characters included
any_text = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=12)
awkward_text = st.sampled_from(["", " ", "a\x00b", "\ud800", "x\udfffy", "\n", "tab\there", "\u2028", "\x85",
                                "é", "\U0001f600", "a" * 300, "A", "a", "a ", "../up", "/abs", ".", "a/./b",
                                "'{0.__class__}'.format(1)", "(__import__('os'))", "((((((((((1))))))))))"])
expressions_text = st.sampled_from([
    "(1 + 1)", "(metadata['i'])", "('lc_%d.gz' % metadata['i'])", "'{i}_{i_index}'.format(**metadata)",
    "(random.random())", "(random.randint(1, 3))", "(constants.Rearth * 4)", "(constants_si.day)",
    "(requested_metadata['a']['x'])", "(metadata['missing'])", "(1 +)", "(9 ** 9 ** 9)", "('x' * 10 ** 7)",
    "([0] * 100)", "(None)", "(True)", "(1.5)", "('a\\x00b')", "('\\ud800')", "({'k': [1]})", "(float('nan'))",
    "(10 ** 3000)", "(math.inf)", " (2)", "'null'", "('sh' + 'ell')", "(list(range(5)))"])
text = st.one_of(any_text, awkward_text, expressions_text)
numbers = st.one_of(st.integers(), st.integers(min_value=-2**40, max_value=2**40),
                    st.sampled_from([2**31, -2**31 - 1, 2**63, 10**4000, 10**400]), st.floats())
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)
def _nest(depth):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


nested = st.integers(min_value=90, max_value=160).map(_nest)  # around MAX_NESTING; deeper files: see below
huge = st.sampled_from([10**4, 10**6, 4 * 10**6]).map(lambda size: "x" * size)
values = st.integers(min_value=0, max_value=99).flatmap(
    lambda n: nested if n == 0 else huge if n == 1 else scalars if n < 40 else json_values)


def mostly(plausible, garbage=values):
    """``plausible`` 24 times in 25, anything else the 25th."""
    return st.integers(min_value=0, max_value=24).flatmap(lambda n: garbage if n == 0 else plausible)


known_types = mostly(st.sampled_from(["null", "shell", "write_text", "emit_metadata", "'null'", "('sh' + 'ell')"]),
                     st.one_of(st.sampled_from(["nul", "execution_chain", "execution_for_loop"]), text))
names = mostly(st.sampled_from(["a", "b", "c", "fit_1", "('fit_%d' % metadata['i'])", "(metadata['i'])"]),
               st.one_of(text, numbers))
file_names = mostly(st.sampled_from(["a.txt", "b.txt", "c/d.txt", "('lc_%d.gz' % metadata['i'])", "A.txt", "a.txt "]),
                    text)
files = mostly(st.dictionaries(mostly(st.sampled_from(["lc", "x", "('k%d' % metadata['i'])"]), text),
                               file_names, max_size=3))
sources = mostly(st.lists(mostly(st.sampled_from(["a", "b", "('a')", "('fit_%d' % metadata['i'])"]), text),
                          max_size=2))
COMMON = {"name": names, "inputs": files, "outputs": files, "requires_metadata_from": sources,
          "job_name": mostly(st.sampled_from(["j", "other"]), text),
          "working_directory": mostly(st.sampled_from(["w", "w/x", "('d%d' % metadata['i'])"]), text),
          "priority": mostly(st.integers(min_value=-5, max_value=5), numbers),
          "specs": st.one_of(json_values, values), "command": st.just("true"), "comment": values}


def leaf_tasks():
    return st.fixed_dictionaries({"task": known_types}, optional=dict(COMMON, extra=values))


def control_tasks(children):
    ranges = st.one_of(st.tuples(numbers, numbers, st.integers(min_value=-2, max_value=40)).map(list), values,
                       st.tuples(st.floats(min_value=0.01, max_value=1e6), st.floats(min_value=0.01, max_value=1e6),
                                 st.integers(min_value=1, max_value=30)).map(list),
                       st.just(["(constants.Rearth / 4)", "(constants.Rearth * 4)", 10]))
    loop = st.fixed_dictionaries(
        {"task": st.just("execution_for_loop"), "parameter": st.one_of(st.just("i"), text),
         "task_list": st.lists(children, max_size=3)},
        optional={"values": mostly(st.lists(values, min_size=1, max_size=3)), "name": names,
                  "requires_metadata_from": sources})
    loop = st.tuples(loop, st.sampled_from(["values", "linear_range", "log_range"]), ranges).map(
        lambda parts: dict(parts[0], **{parts[1]: parts[0].get("values", parts[2]) if parts[1] == "values"
                                        else parts[2]}))
    conditional = st.fixed_dictionaries(
        {"task": st.just("execution_conditional"), "criterion": st.one_of(expressions_text, values),
         "task_list": st.lists(children, max_size=2)},
        optional={"else_task_list": st.lists(children, max_size=2),
                  "name": names, "requires_metadata_from": sources})
    do_while = st.fixed_dictionaries(
        {"task": st.just("execution_do_while_loop"), "iteration_name": st.one_of(st.just("n"), text),
         "repeat_criterion": st.one_of(expressions_text, values),
         "task_list": st.lists(children, min_size=1, max_size=2)},
        optional={"requires_metadata_from_child": sources, "max_iterations": numbers, "name": names})
    chain = st.fixed_dictionaries({"task": st.just("execution_chain"), "task_list": st.lists(children, max_size=3)},
                                  optional={"name": names, "working_directory": text})
    return st.one_of(loop, conditional, do_while, chain)


tasks = st.recursive(leaf_tasks(), control_tasks, max_leaves=6)
chain_objects = st.fixed_dictionaries(
    {"task_list": mostly(st.lists(tasks, min_size=1, max_size=4))},
    optional={"job_name": mostly(st.just("fuzz"), text), "working_directory": mostly(st.just("f"), text),
              "random_seed": mostly(st.integers(), scalars), "priority": mostly(st.integers(-3, 3), numbers),
              "comment": values})
chains = mostly(chain_objects, st.one_of(values, chain_objects.map(lambda chain: dict(chain, task_lists=[]))))


# -- helpers ---------------------------------------------------------------------------------------


def row_counts(engine) -> dict:
    with engine.connect() as connection:
        return {table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for table in (schema.jobs, schema.tasks, schema.task_dependencies, schema.products)}


def outcome(environment, chain) -> tuple:
    """("accepted", task count) or ("refused", message); any other exception fails the test."""
    before = row_counts(environment.engine)
    try:
        _job_id, plan = submit_chain(environment.engine, chain, SOURCE)
    except ChainError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(SOURCE + ": "), message
        message.encode("utf-8")  # printable: no lone surrogate left
        assert row_counts(environment.engine) == before, "a refused chain wrote rows: %s" % message
        return ("refused", message)
    after = row_counts(environment.engine)
    assert after["eas_jobs"] == before["eas_jobs"] + 1
    assert after["eas_tasks"] == before["eas_tasks"] + len(plan.nodes)
    render_plan(plan).encode("utf-8")  # what --dry-run prints can be printed
    return ("accepted", len(plan.nodes))


@pytest.fixture(scope="module")
def environments(tmp_path_factory):
    """One database per SQL back end, kept for all examples (they accumulate jobs alike)."""
    made = []
    for backend in SQL_BACKENDS:
        made.append(make_environment(backend, tmp_path_factory.mktemp("fuzz_" + backend)))
    yield made
    for environment in made:
        environment.engine.dispose()


# -- tests -----------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=CHAIN_EXAMPLES)
@given(chain=chains)
def test_any_chain_is_accepted_or_refused_alike_on_every_back_end(environments, chain):
    results = [outcome(environment, chain) for environment in environments]
    event(results[0][0])
    if draws_fresh_numbers(chain):
        event("unseeded random: outcomes not compared")  # each submission draws its own numbers
        return
    assert all(result == results[0] for result in results), dict(zip(SQL_BACKENDS, results))


def draws_fresh_numbers(chain) -> bool:
    """A chain without random_seed that may call random: two submissions need not agree."""
    return not (isinstance(chain, dict) and "random_seed" in chain) and "random" in json.dumps(chain)


@settings(FUZZ, max_examples=SCRIPT_EXAMPLES)
@given(chain=chains)
def test_submit_script_exits_0_or_2_with_one_line(eas, chain):
    path = eas.tmp_path / SOURCE
    path.write_text(json.dumps(chain))  # ensure_ascii: lone surrogates travel as \ud800 escapes, as JSON allows
    before = row_counts(eas.engine)
    dry = eas.script("job_submission/submit.py", "--tasks", str(path), "--dry-run", check=False)
    assert "Traceback" not in dry.stdout + dry.stderr and dry.returncode in (0, 2), dry.stderr
    assert row_counts(eas.engine) == before
    result = eas.script("job_submission/submit.py", "--tasks", str(path), check=False)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == dry.returncode, (dry.stderr, result.stderr)
    if result.returncode == 0:
        assert row_counts(eas.engine)["eas_jobs"] == before["eas_jobs"] + 1
        return
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: %s: " % path), result.stderr
    assert row_counts(eas.engine) == before


def test_submit_script_refuses_unreadable_files_in_one_line(eas_sqlite, tmp_path):
    cases = {"deep.json": "[" * 100_000 + "]" * 100_000, "digits.json": '{"task_list": [], "x": 1%s}' % ("0" * 5000),
             "nul.json": '{"task_list": [{"task": "null", "name": "a\\u0000b"}]}',
             "surrogate.json": '{"task_list": [{"task": "null", "name": "\\udc00"}]}',
             "newline.json": '{"task_list": [{"task": "nul\\nl"}]}'}
    before = row_counts(eas_sqlite.engine)
    for name, content in cases.items():
        path = tmp_path / name
        path.write_text(content)
        result = eas_sqlite.script("job_submission/submit.py", "--tasks", str(path), check=False)
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: %s: " % path), (
            name, result.stderr)
    assert row_counts(eas_sqlite.engine) == before


expression_soup = st.lists(st.sampled_from(
    ["(", ")", "[", "]", "{", "}", "'", '"', "metadata", "requested_metadata", "constants", "constants_si", "random",
     ".", ",", ":", "+", "-", "*", "**", "/", "//", "%", "<<", ">>", "==", "<", "not", "and", "or", "if", "else",
     "for", "in", "lambda", "x", "1", "0", "-1", "9", "1e308", "2.5", "'a'", "'%s'", "'{}'", "'{0}'", "format",
     "join", "split", "__class__", "_x", "random", "uniform", "randint", "gauss", "Rearth", "sqrt", "range", "len",
     "str", "int", "float", "dict", "list", "sum", "min", "max", "round", "abs", "pow", "math", "f'", "\x00", "\n",
     "\ud800", " ", "*", "**", "='", "import", ";", "yield", "await", ":=", "@", "~", "^", "|", "&"]),
    max_size=25).map(lambda tokens: "(" + " ".join(tokens) + ")")


@settings(FUZZ, max_examples=EXPRESSION_EXAMPLES)
@given(text=st.one_of(any_text, st.text(max_size=200), expression_soup, expressions_text, awkward_text))
def test_any_expression_text_gives_a_plain_value_or_an_expression_error(text):
    try:
        result = evaluate(text, {"i": 3, "i_index": 0, "x": [1, 2], "s": "a\x00"}, {"a": {"x": 1}})
    except ExpressionError as error:
        assert error.expression == text and error.reason
        return
    json.dumps(result, allow_nan=True)  # plain JSON values only
    assert not isinstance(result, float) or math.isnan(result) or isinstance(result, float)


def test_a_file_from_an_earlier_job_is_found_by_its_exact_name_on_every_back_end(environments):
    """MariaDB compares text without case and trailing blanks; a path must still match only itself."""
    for environment in environments:
        submit_chain(environment.engine, {"task_list": [{"task": "null", "outputs": {"x": "Case.txt"}}]}, "first.json")
    for reader in ("case.txt", "Case.txt "):
        chain = {"task_list": [{"task": "null", "inputs": {"x": reader}}]}
        results = [outcome(environment, chain) for environment in environments]
        assert results == [("refused", "fuzz.json: task_list[0]: field 'inputs.x': no task produces file %r (not in "
                                       "this chain, nor in the database)" % reader)] * len(environments), results
    results = [outcome(environment, {"task_list": [{"task": "null", "inputs": {"x": "Case.txt"}}]})
               for environment in environments]
    assert results == [("accepted", 2)] * len(environments)
