"""Validation of task chains: every mistake is reported before anything is written, naming the file, the task's
path in the chain and the field; a submission with any error writes zero rows."""

import json
import os
import textwrap

import pytest
import sqlalchemy as sa
from conftest import PROJECT_ROOT, make_environment

from eas_controller.chains import ChainError, expand_chain, read_chain_text
from eas_controller.database import schema
from eas_controller.registry import read_registries
from eas_controller.submission import submit_chain

KNOWN_TYPES = read_registries([])
BACKENDS = ["sqlite", "mysql"]


def chain_of(*tasks, **top):
    return dict(top, task_list=list(tasks))


def expand(chain, source="job.json"):
    return expand_chain(chain, source, KNOWN_TYPES)


def shell(name=None, **fields):
    task = {"task": "shell", "command": "true"}
    if name:
        task["name"] = name
    task.update(fields)
    return task


# (case id, chain object, substrings the message must contain)
CASES = [
    ("unknown-type", chain_of({"task": "execution_chain", "task_list": [{"task": "null"}, {"task": "nul"}]}),
     ["job.json: task_list[0].task_list[1]: unknown task type 'nul'", "did you mean 'null'"]),
    ("unknown-type-expression", chain_of({"task": "('sle' + 'ep_long')"}),
     ["task_list[0]", "unknown task type 'sleep_long'", "'sleep'"]),
    ("missing-task", chain_of({"task": "execution_chain", "task_list": [{"task": "null"}, {"name": "x"}]}),
     ["job.json: task_list[0].task_list[1]: missing field 'task'"]),
    ("task-list-not-a-list", chain_of({"task": "execution_chain", "task_list": {"task": "null"}}),
     ["job.json: task_list[0]: field 'task_list' must be a list of tasks, not an object"]),
    ("top-task-list-not-a-list", {"task_list": "null"},
     ["job.json: <chain>: field 'task_list' must be a list of tasks, not a string"]),
    ("missing-task-list", {"job_name": "x"}, ["job.json: missing field 'task_list'"]),
    ("unknown-top-field", {"task_lists": [], "task_list": []}, ["unknown top-level field 'task_lists'",
                                                                "did you mean 'task_list'"]),
    ("task-not-an-object", chain_of("null"), ["task_list[0]: each task must be a JSON object, not a string"]),
    ("two-producers", chain_of(shell("a", outputs={"x": "out.txt"}),
                               {"task": "execution_chain", "task_list": [shell("b", outputs={"y": "out.txt"})]}),
     ["task_list[1].task_list[0]", "file 'out.txt' is also produced by task_list[0]", "one producer"]),
    ("two-producers-in-loop", chain_of({"task": "execution_for_loop", "parameter": "i", "values": [1, 2],
                                        "task_list": [shell("a", outputs={"x": "same.txt"})]}),
     ["task_list[0]{i_index=1}.task_list[0] (with i=2)", "'same.txt' is also produced by task_list[0]{i_index=0}"]),
    ("metadata-from-unknown", chain_of(shell("a"), shell("b", requires_metadata_from=["c"])),
     ["task_list[1]: field 'requires_metadata_from' names 'c'", "no sibling task has that name",
      "earlier siblings: 'a'"]),
    ("metadata-from-later", chain_of(shell("a", requires_metadata_from=["b"]), shell("b")),
     ["task_list[0]: field 'requires_metadata_from' names 'b'", "later sibling",
      "only read the metadata of siblings listed before it"]),
    ("metadata-from-itself", chain_of(shell("a", requires_metadata_from="a")), ["names 'a', which is itself"]),
    ("duplicate-names", chain_of({"task": "execution_chain", "task_list": [shell("a"), shell("b"), shell("a")]}),
     ["task_list[0].task_list[2]: duplicate task name 'a'", "task_list[0].task_list[0] already has it"]),
    ("cycle", chain_of(shell("a", inputs={"i": "b.txt"}, outputs={"o": "a.txt"}),
                       shell("b", inputs={"i": "a.txt"}, outputs={"o": "b.txt"})),
     ["dependency cycle", "task_list[0] (reads b.txt) -> task_list[1] (reads a.txt) -> task_list[0]"]),
    ("reads-itself", chain_of(shell("a", inputs={"i": "a.txt"}, outputs={"o": "a.txt"})),
     ["task_list[0]: field 'inputs.i': the task reads 'a.txt', which it produces itself"]),
    ("linear-count-zero", chain_of({"task": "execution_for_loop", "parameter": "x", "linear_range": [1, 2, 0],
                                    "task_list": [{"task": "null"}]}),
     ["task_list[0]: field 'linear_range': count must be at least 1, not 0"]),
    ("log-count-negative-with-expressions", chain_of(
        {"task": "execution_for_loop", "parameter": "r", "log_range": ["(constants.Rearth)", "(constants.Rjup)", -2],
         "task_list": [{"task": "null"}]}),
     ["task_list[0]: field 'log_range': count must be a whole number of at least 1, not -2"]),
    ("log-range-not-positive", chain_of({"task": "execution_for_loop", "parameter": "x", "log_range": [0, 2, 3],
                                         "task_list": [{"task": "null"}]}),
     ["task_list[0]: field 'log_range': start and end must be positive"]),
    ("loop-two-forms", chain_of({"task": "execution_for_loop", "parameter": "x", "values": [1], "log_range": [1, 2, 3],
                                 "task_list": []}),
     ["needs exactly one of 'values', 'linear_range', 'log_range' (it has values and log_range)"]),
    ("loop-empty-values", chain_of({"task": "execution_for_loop", "parameter": "x", "values": [], "task_list": []}),
     ["field 'values' must be a non-empty list"]),
    ("loop-without-parameter", chain_of({"task": "execution_for_loop", "values": [1], "task_list": []}),
     ["task_list[0]: execution_for_loop needs a 'parameter'"]),
    ("control-typo", chain_of({"task": "execution_conditional", "criterion": "(1 > 0)", "task_list": [],
                               "else_tasks": []}),
     ["task_list[0]: execution_conditional has no field 'else_tasks'", "did you mean 'else_task_list'"]),
    ("control-with-outputs", chain_of({"task": "execution_chain", "task_list": [], "outputs": {"a": "b"}}),
     ["has no field 'outputs'", "control-flow tasks make no files themselves"]),
    ("leaf-with-task-list", chain_of({"task": "null", "task_list": []}),
     ["task_list[0]: field 'task_list' belongs to control-flow tasks"]),
    ("conditional-without-criterion", chain_of({"task": "execution_conditional", "task_list": []}),
     ["execution_conditional needs a 'criterion'"]),
    ("do-while-without-criterion", chain_of({"task": "execution_do_while_loop", "iteration_name": "n",
                                             "task_list": [{"task": "null"}]}),
     ["task_list[0]: execution_do_while_loop needs 'repeat_criterion'"]),
    ("do-while-child-unknown", chain_of({"task": "execution_do_while_loop", "iteration_name": "n",
                                         "repeat_criterion": "(requested_metadata['fit']['chi2'] > 1)",
                                         "requires_metadata_from_child": ["fit"],
                                         "task_list": [shell("fitting")]}),
     ["field 'requires_metadata_from_child' names 'fit', which is not the name of a task directly in its task_list",
      "names there: 'fitting'"]),
    ("do-while-criterion-reads-unnamed-child", chain_of({"task": "execution_do_while_loop", "iteration_name": "n",
                                                         "repeat_criterion": "(requested_metadata['fit']['x'] > 1)",
                                                         "task_list": [shell("fit")]}),
     ["task_list[0]: field 'repeat_criterion' reads requested_metadata, but neither this task nor an enclosing "
      "control task names any task"]),
    ("requested-without-sources", chain_of(shell("a"), shell("b", command="(requested_metadata['a']['x'])")),
     ["task_list[1]: field 'command' reads requested_metadata", "names any task in 'requires_metadata_from'"]),
    ("requested-wrong-name", chain_of(shell("a"), shell("c"), shell("b", requires_metadata_from=["a"],
                                                                   command="(requested_metadata['c']['x'])")),
     ["task_list[2]: field 'command' reads requested_metadata['c'], but 'c' is not in requires_metadata_from",
      "in scope: 'a'"]),
    ("requested-in-file-name", chain_of(shell("a"), shell("b", requires_metadata_from=["a"],
                                                          outputs={"x": "(requested_metadata['a']['f'])"})),
     ["task_list[1]: field 'outputs' cannot use requested_metadata"]),
    ("deferred-branch-checked-at-submission", chain_of(
        shell("detect"),
        {"task": "execution_conditional", "requires_metadata_from": ["detect"],
         "criterion": "(requested_metadata['detect']['outcome'] == 'PASS')",
         "task_list": [{"task": "null"}], "else_task_list": [{"task": "null"}, {"task": "sleeep"}]}),
     ["task_list[1].else_task_list[1]: unknown task type 'sleeep'", "did you mean 'sleep'"]),
    ("expression-missing-key", chain_of({"task": "execution_for_loop", "parameter": "size", "values": [1],
                                         "task_list": [{"task": "null", "x": "(metadata['sise'] * 2)"}]}),
     ["task_list[0]{size_index=0}.task_list[0] (with size=1)", "field 'x'",
      "expression \"(metadata['sise'] * 2)\": missing key 'sise'"]),
    ("expression-syntax", chain_of({"task": "null", "x": "(1 +)"}),
     ["task_list[0]", "field 'x'", "invalid syntax"]),
    ("expression-in-file-name", chain_of(shell("a", outputs={"lc": "'lc_{i}.csv'.format(**metadata)"})),
     ["task_list[0]: field 'outputs.lc'", "missing key 'i'"]),
    ("path-outside", chain_of(shell("a", outputs={"x": "../../etc/passwd"})),
     ["task_list[0]: field 'outputs.x'", "must stay inside the working directory"]),
    ("working-directory-absolute", chain_of(shell("a", working_directory="/tmp")),
     ["task_list[0]", "field 'working_directory'", "must stay inside"]),
    ("name-too-long", chain_of({"task": "null", "name": "('n' * 300)"}),
     ["task_list[0]: field 'name' is 300 characters long; at most 255 are stored"]),
    ("do-while-max-iterations", chain_of({"task": "execution_do_while_loop", "iteration_name": "n",
                                          "repeat_criterion": "(True)", "max_iterations": 0,
                                          "task_list": [{"task": "null"}]}),
     ["field 'max_iterations' must be a whole number of at least 1, not 0"]),
]


@pytest.mark.parametrize("chain, expected", [(c, e) for _i, c, e in CASES], ids=[i for i, _c, _e in CASES])
def test_error_message_names_file_task_and_field(chain, expected):
    with pytest.raises(ChainError) as caught:
        expand(chain)
    message = str(caught.value)
    assert message.startswith("job.json: "), message
    for part in expected:
        assert part in message, "%r not in %r" % (part, message)


def test_json_syntax_error_gives_line_and_column():
    text = '{\n  "task_list": [\n    {"task": "null",}\n  ]\n}\n'
    with pytest.raises(ChainError) as caught:
        read_chain_text(text, "broken.json")
    assert str(caught.value).startswith("broken.json: not valid JSON at line 3, column 21:"), str(caught.value)


def test_a_chain_must_be_an_object():
    with pytest.raises(ChainError, match="must be a JSON object with a 'task_list', not a list"):
        read_chain_text("[]", "list.json")


def table_counts(engine) -> dict:
    with engine.connect() as connection:
        return {table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for table in schema.metadata_obj.sorted_tables if table is not schema.schema_info}


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_row_is_written_for_any_error(backend, tmp_path):
    """Every invalid chain above, plus an input nobody produces (only the database can tell), writes nothing."""
    environment = make_environment(backend, tmp_path)
    try:
        before = table_counts(environment.engine)
        assert before["eas_tasks"] == 0 and before["eas_task_types"] > 0
        unproduced = chain_of({"task": "execution_chain", "task_list": [
            shell("a", outputs={"x": "a.txt"}), shell("b", inputs={"x": "a.txt", "y": "missing.txt"})]})
        for case_id, chain, _expected in CASES + [("unproduced", unproduced, None)]:
            with pytest.raises(ChainError) as caught:
                submit_chain(environment.engine, chain, "job.json")
            if case_id == "unproduced":
                assert ("job.json: task_list[0].task_list[1]: field 'inputs.y': no task produces file 'missing.txt'"
                        in str(caught.value)), str(caught.value)
            assert table_counts(environment.engine) == before, case_id
        # the same chains, once valid, do write
        submit_chain(environment.engine, chain_of(shell("a", outputs={"x": "a.txt"}),
                                                  shell("b", inputs={"x": "a.txt"})), "job.json")
        after = table_counts(environment.engine)
        assert (after["eas_jobs"], after["eas_tasks"], after["eas_products"]) == (1, 3, 1)
    finally:
        environment.engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_made_by_an_earlier_job_is_accepted(backend, tmp_path):
    environment = make_environment(backend, tmp_path)
    try:
        submit_chain(environment.engine, chain_of(shell("a", outputs={"x": "shared.txt"})), "first.json")
        _job, plan = submit_chain(environment.engine, chain_of(shell("b", inputs={"x": "shared.txt"})), "second.json")
        assert plan.nodes[1].unresolved_inputs == [("shared.txt", "x")]
        with environment.engine.connect() as connection:
            rows = connection.execute(sa.select(schema.task_dependencies.c.kind, schema.task_dependencies.c.satisfied)
                                      .where(schema.task_dependencies.c.kind == "file")).all()
        assert [(row.kind, bool(row.satisfied)) for row in rows] == [("file", False)]
    finally:
        environment.engine.dispose()


def test_submit_script_reports_one_line_and_writes_nothing(eas_sqlite, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(textwrap.dedent("""\
        {"task_list": [
          {"task": "execution_for_loop", "parameter": "i", "values": [1, 2],
           "task_list": [{"task": "synthesise_lightcurv", "name": "s"}]}
        ]}
        """))
    before = table_counts(eas_sqlite.engine)
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", str(path), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: %s: task_list[0].task_list[0]: unknown task type 'synthesise_lightcurv'; did you mean "
        "'synthesise_lightcurve' or 'summarise_lightcurves' or 'synthesis_psls'?" % path]
    broken = tmp_path / "broken.json"
    broken.write_text('{"task_list": [\n  {"task": "null"\n]}')
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", str(broken), check=False)
    assert result.returncode == 2 and "broken.json: not valid JSON at line 3, column 1" in result.stderr, result.stderr
    assert table_counts(eas_sqlite.engine) == before


def test_every_shipped_demo_chain_is_valid():
    """Every chain under demo_jobs/ (demo_jobs/standalone/ holds single tasks for launch_standalone.py, tested
    by tests/test_standalone.py)."""
    folder = os.path.join(PROJECT_ROOT, "demo_jobs")
    standalone = os.path.join(folder, "standalone")
    paths = [os.path.join(root, name) for root, _dirs, names in os.walk(folder) for name in names
             if name.endswith(".json") and not root.startswith(standalone)]
    assert len(paths) >= 8
    for path in paths:
        with open(path) as handle:
            plan = expand(json.load(handle), path)
        assert plan.worker_tasks, path


def test_documented_constants_match_the_code():
    """docs/task_chains.md carries a copy of both constants tables; every row must match the code exactly."""
    from eas_controller.constants import CONSTANTS_SI_TABLE, CONSTANTS_TABLE

    with open(os.path.join(PROJECT_ROOT, "docs", "task_chains.md")) as handle:
        text = handle.read()
    sections = {"constants": text.split("### `constants`:")[1].split("### ")[0],
                "constants_si": text.split("### `constants_si`:")[1].split("## ")[0]}
    for section, rows in (("constants", CONSTANTS_TABLE), ("constants_si", CONSTANTS_SI_TABLE)):
        documented = {line.split("|")[1].strip(" `"): [cell.strip() for cell in line.split("|")[2:5]]
                      for line in sections[section].splitlines() if line.startswith("| `")}
        assert list(documented) == [row[0] for row in rows], section
        for name, value, unit, description in rows:
            assert documented.get(name) == [repr(value), unit, description], (section, name)
