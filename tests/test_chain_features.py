"""Every task-chain feature, run for real: each chain in demo_jobs/feature_tests goes through run_local.py (the real
scheduler and real worker processes) on SQLite and MariaDB, and its task counts, loop values and output metadata
are checked exactly. Also: dry runs, overrides, deep nesting, run-time expression errors, a large expansion."""

import json
import math
import os
import subprocess
import time

import pytest
import sqlalchemy as sa
from conftest import PROJECT_ROOT, make_environment

from eas_controller import reports
from eas_controller.chains import expand_chain
from eas_controller.constants import constants
from eas_controller.database import schema
from eas_controller.database.engine import read_transaction
from eas_controller.queues import make_queue
from eas_controller.registry import read_registries
from eas_controller.scheduler import Scheduler
from eas_controller.submission import submit_chain

BACKENDS = ["sqlite", "mysql"]
FEATURES = os.path.join(PROJECT_ROOT, "demo_jobs", "feature_tests")
CONTROL = ("execution_chain", "execution_for_loop", "execution_conditional", "execution_do_while_loop")
DEPTH = lambda radius: (radius / constants.Rsun) ** 2  # noqa: E731 - what synthesise_lightcurve computes


@pytest.fixture(params=BACKENDS)
def env(request, tmp_path):
    environment = make_environment(request.param, tmp_path)
    yield environment
    environment.engine.dispose()


def run_feature(env, name: str, *extra: str) -> list[dict]:
    """Run a feature chain to the end with two workers; returns its job tree (display_job_tree's JSON)."""
    result = env.script("job_submission/run_local.py", "--tasks", os.path.join(FEATURES, name), "--workers", "2",
                        "--timeout", "120", *extra, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(env.script("diagnostics/display_job_tree.py", "--format", "json").stdout)


def by_type(tree: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in tree:
        groups.setdefault(row["task_type"], []).append(row)
    return groups


def counts(tree: list[dict]) -> dict[str, int]:
    return {task_type: len(rows) for task_type, rows in by_type(tree).items()}


def product(env, relative: str) -> str:
    with open(os.path.join(env.settings.data_dir, relative)) as handle:
        return handle.read()


def test_for_loop_over_values(env):
    tree = run_feature(env, "for_loop_values.json")
    assert counts(tree) == {"execution_chain": 1, "execution_for_loop": 1, "synthesise_lightcurve": 3,
                            "measure_transit_depth": 3}
    assert {row["state"] for row in tree} == {"done"}
    radii = [4 * constants.Rearth, constants.Rjup, 0.35]  # Jupiter radii
    synthesised = by_type(tree)["synthesise_lightcurve"]
    assert [row["inherited"]["planet_radius"] for row in synthesised] == radii
    assert [row["inherited"]["planet_radius_index"] for row in synthesised] == [0, 1, 2]
    for row, radius in zip(synthesised, radii):
        assert math.isclose(row["metadata"]["true_depth"], DEPTH(radius), rel_tol=1e-12)
    for row, radius in zip(by_type(tree)["measure_transit_depth"], radii):
        assert math.isclose(row["metadata"]["depth"], DEPTH(radius), rel_tol=1e-5)
    with env.engine.connect() as connection:  # an expression field of a leaf, evaluated at submission
        labels = connection.execute(sa.select(schema.tasks.c.description).where(
            schema.tasks.c.task_type == "measure_transit_depth").order_by(schema.tasks.c.id)).scalars().all()
    assert [json.loads(text)["label"] for text in labels] == ["r = 4.000 Rearth", "r = 11.221 Rearth",
                                                             "r = 3.928 Rearth"]


def test_linear_range_includes_both_ends(env):
    tree = run_feature(env, "linear_range.json")
    synthesised = by_type(tree)["synthesise_lightcurve"]
    assert [row["inherited"]["duration"] for row in synthesised] == [10, 15, 20, 25, 30]
    assert [row["metadata"]["points"] for row in synthesised] == [240, 360, 480, 600, 720]
    for duration in (10, 15, 20, 25, 30):
        assert product(env, "feature_tests/linear_range/lc_%.1f_days.csv" % duration).count("\n") == duration * 24 + 1


def test_log_range_includes_both_ends(env):
    tree = run_feature(env, "log_range.json")
    synthesised = by_type(tree)["synthesise_lightcurve"]
    assert len(synthesised) == 8 and counts(tree)["execution_for_loop"] == 1
    expected = [constants.Rearth / 8 * 64 ** (i / 7) for i in range(8)]
    radii = [row["inherited"]["radius"] for row in synthesised]
    assert math.isclose(radii[0], constants.Rearth / 8, rel_tol=1e-15)
    assert math.isclose(radii[-1], constants.Rearth * 8, rel_tol=1e-15)
    for radius, wanted, row in zip(radii, expected, synthesised):
        assert math.isclose(radius, wanted, rel_tol=1e-12)
        assert math.isclose(row["metadata"]["true_depth"], DEPTH(wanted), rel_tol=1e-12)
    assert [row["inherited"]["radius_index"] for row in synthesised] == list(range(8))


def test_nested_loops(env):
    tree = run_feature(env, "nested_loops.json")
    assert counts(tree) == {"execution_chain": 1, "execution_for_loop": 3, "synthesise_lightcurve": 6,
                            "measure_transit_depth": 6}
    synthesised = by_type(tree)["synthesise_lightcurve"]
    seen = [(row["inherited"]["size"], row["inherited"]["cadence"], row["metadata"]["points"]) for row in synthesised]
    assert seen == [(1, 30, 240), (1, 60, 120), (1, 90, 80), (3, 30, 240), (3, 60, 120), (3, 90, 80)]
    for row in by_type(tree)["measure_transit_depth"]:
        assert math.isclose(row["metadata"]["depth"], DEPTH(row["inherited"]["size"] * constants.Rearth), rel_tol=1e-5)
    for size_index in range(2):
        for cadence_index in range(3):
            assert product(env, "feature_tests/nested_loops/lc_%d_%d.csv" % (size_index, cadence_index))


def test_conditional_on_a_siblings_metadata(env):
    tree = run_feature(env, "conditional.json")
    assert counts(tree) == {"execution_chain": 1, "execution_for_loop": 1, "execution_conditional": 2,
                            "synthesise_lightcurve": 2, "measure_transit_depth": 2, "shell": 4}
    shells = {(row["task_name"], row["inherited"]["planet_radius_index"]): row for row in by_type(tree)["shell"]}
    assert set(shells) == {("reject", 0), ("confirm", 1), ("report", 0), ("report", 1)}
    assert shells["reject", 0]["metadata"] == {"verdict": "rejected"}
    assert shells["confirm", 1]["metadata"] == {"verdict": "confirmed"}
    detected = {row["inherited"]["planet_radius_index"]: row["metadata"] for row in by_type(tree)["measure_transit_depth"]}
    assert [detected[0]["outcome"], detected[1]["outcome"]] == ["FAIL", "PASS"]
    for index in (0, 1):  # a leaf field that read requested metadata, evaluated when the task was promoted
        assert shells["report", index]["metadata"]["reported_ppm"] == round(detected[index]["depth_ppm"], 3)
    conditionals = {row["task_id"]: row for row in by_type(tree)["execution_conditional"]}
    for row in by_type(tree)["shell"]:
        if row["task_name"] in ("reject", "confirm"):
            assert row["parent_id"] in conditionals


def test_do_while_stops_when_its_criterion_says(env):
    tree = run_feature(env, "do_while.json")
    assert counts(tree) == {"execution_chain": 1, "execution_do_while_loop": 1, "shell": 5}
    passes = [row for row in tree if row["task_name"] == "measure"]
    assert [row["inherited"]["step_index"] for row in passes] == [1, 2, 3, 4]
    assert [row["metadata"]["value"] for row in passes] == [3, 6, 9, 12]  # 12 < 10 is false: no fifth pass
    loop = by_type(tree)["execution_do_while_loop"][0]
    assert loop["state"] == "done" and {row["parent_id"] for row in passes} == {loop["task_id"]}
    # the task after the loop read the file as the last pass left it
    assert product(env, "feature_tests/do_while/final_progress.txt") == "step 4\n"
    with env.engine.connect() as connection:
        assert connection.execute(sa.select(schema.tasks.c.expansions).where(
            schema.tasks.c.id == loop["task_id"])).scalar_one() == 4


def test_file_dependencies_fan_out_and_in(env):
    tree = run_feature(env, "file_dependencies.json")
    assert counts(tree) == {"execution_chain": 1, "execution_for_loop": 1, "shell": 6}
    # 'combine' is listed first but ran after the three parts, each of which ran after 'seed'
    assert product(env, "feature_tests/file_dependencies/combined.txt") == "seed\nalpha\nseed\nbeta\nseed\ngamma\n"
    combine = next(row for row in tree if row["task_name"] == "combine")
    assert combine["metadata"] == {"lines": 6}
    # overrides: the archive task runs in its own working directory and job name
    archive = next(row for row in tree if row["task_name"] == "archive")
    assert archive["job_name"] == "feature_file_dependencies_archive" and combine["job_name"] == "feature_file_dependencies"
    assert product(env, "feature_tests/file_dependencies/archive/combined_copy.txt") == product(
        env, "feature_tests/file_dependencies/combined.txt")
    with env.engine.connect() as connection:
        kinds = connection.execute(sa.select(schema.task_dependencies.c.kind, sa.func.count())
                                   .group_by(schema.task_dependencies.c.kind)).all()
    assert dict(kinds) == {"file": 3 + 3 + 1, "child": 4 + 3}


DEEP_CHAIN = {
    "job_name": "deep",
    "working_directory": "deep",
    "task_list": [
        {"task": "execution_for_loop", "parameter": "outer", "values": ["x", "y"], "job_name": "deep_loop",
         "task_list": [
             {"task": "execution_do_while_loop", "iteration_name": "round", "name": "rounds",
              "requires_metadata_from_child": ["probe"],
              "repeat_criterion": "(requested_metadata['probe']['round'] < 2)",
              "working_directory": "('deep/%s' % metadata['outer'])",
              "task_list": [
                  {"task": "shell", "name": "probe",
                   "command": "('echo \\'{\"round\": %d}\\' > \"$EAS_METADATA_OUT\"; echo %s > \"$EAS_OUTPUT_NOTE\"'"
                              " % (metadata['round_index'], metadata['outer']))",
                   "outputs": {"note": "note.txt"}},
                  {"task": "shell", "name": "check", "command": "cat \"$EAS_INPUT_NOTE\"",
                   "inputs": {"note": "note.txt"}},
                  {"task": "execution_conditional", "name": "last_round", "requires_metadata_from": ["probe"],
                   "criterion": "(requested_metadata['probe']['round'] == 2)",
                   "task_list": [
                       {"task": "execution_for_loop", "parameter": "inner", "linear_range": [1, 2, 2],
                        "task_list": [{"task": "null", "name": "leaf"}]}]},
              ]},
         ]},
        {"task": "shell", "name": "plan",
         "command": "echo '{\"sizes\": [1, 2, 3]}' > \"$EAS_METADATA_OUT\""},
        {"task": "execution_for_loop", "name": "sweep", "parameter": "size", "requires_metadata_from": ["plan"],
         "values": "(requested_metadata['plan']['sizes'])",
         "task_list": [
             {"task": "shell", "name": "square",
              "command": "('echo \\'{\"square\": %d}\\' > \"$EAS_METADATA_OUT\"' % metadata['size'] ** 2)"},
             {"task": "shell", "name": "sum", "requires_metadata_from": ["square"],
              "command": "('echo \\'{\"sum\": %d}\\' > \"$EAS_METADATA_OUT\"' % "
                         "(requested_metadata['square']['square'] + requested_metadata['plan']['sizes'][-1]))"}]},
    ],
}


def test_deep_nesting_and_run_time_values(env, tmp_path):
    """for > do-while > conditional > for, with metadata reaching every level, overrides inherited all the way
    down, a file written and read inside each pass, and a loop whose values only exist at run time."""
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(DEEP_CHAIN))
    result = env.script("job_submission/run_local.py", "--tasks", str(path), "--workers", "2", "--timeout", "120",
                        check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    tree = json.loads(env.script("diagnostics/display_job_tree.py", "--format", "json").stdout)
    assert counts(tree) == {"execution_chain": 1, "execution_for_loop": 1 + 2 + 1, "execution_do_while_loop": 2,
                            "execution_conditional": 4, "shell": 2 * 2 * 2 + 1 + 3 * 2, "null": 4}
    assert {row["state"] for row in tree} == {"done"}
    leaves = sorted((row["inherited"]["outer"], row["inherited"]["round_index"], row["inherited"]["inner"],
                     row["job_name"]) for row in by_type(tree)["null"])
    assert leaves == [("x", 2, 1, "deep_loop"), ("x", 2, 2, "deep_loop"), ("y", 2, 1, "deep_loop"),
                      ("y", 2, 2, "deep_loop")]
    probes = sorted((row["inherited"]["outer"], row["metadata"]["round"]) for row in tree if row["task_name"] == "probe")
    assert probes == [("x", 1), ("x", 2), ("y", 1), ("y", 2)]
    assert product(env, "deep/x/note.txt") == "x\n" and product(env, "deep/y/note.txt") == "y\n"
    sums = sorted(row["metadata"]["sum"] for row in tree if row["task_name"] == "sum")
    assert sums == [1 + 3, 4 + 3, 9 + 3]
    sizes = sorted(row["inherited"]["size"] for row in tree if row["task_name"] == "square")
    assert sizes == [1, 2, 3]


def test_dry_run_prints_the_tree_and_writes_nothing(eas_sqlite):
    from test_chain_validation import table_counts

    before = table_counts(eas_sqlite.engine)
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", os.path.join(FEATURES, "conditional.json"),
                               "--dry-run", "--job-name", "renamed")
    out = result.stdout
    assert "job 'renamed'" in out and "10 tasks now (6 on workers" in out
    assert "#3 measure_transit_depth 'detect' [planet_radius=0.0445574]  -- after #2" in out
    assert "#4 execution_conditional 'decide' [planet_radius=0.0445574]  -- EXPANDS AT RUN TIME once #3 finished" in out
    assert "fields evaluated when its requested metadata exists" in out
    assert "nothing was written" in out
    do_while = eas_sqlite.script("job_submission/submit.py", "--tasks", os.path.join(FEATURES, "do_while.json"),
                                 "--dry-run").stdout
    assert "pass 1 shown; after each pass, (requested_metadata['measure']['value'] < 10) decides" in do_while
    assert "#3 shell 'after_loop'  -- after #1" in do_while
    assert table_counts(eas_sqlite.engine) == before


def test_submit_reads_standard_input_and_job_name_overrides(eas_sqlite):
    with open(os.path.join(FEATURES, "for_loop_values.json")) as handle:
        text = handle.read()
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", "-", "--job-name", "from_stdin", input=text)
    assert "submitted job 1 (from_stdin): 8 tasks (6 to run on workers, 2 control-flow) from <stdin>" in result.stdout
    with eas_sqlite.engine.connect() as connection:
        names = connection.execute(sa.select(schema.tasks.c.job_name).distinct()).scalars().all()
        job = connection.execute(sa.select(schema.jobs.c.name, schema.jobs.c.source)).one()
    assert names == ["from_stdin"] and tuple(job) == ("from_stdin", "<stdin>")


def test_overrides_apply_to_the_task_and_everything_below_it():
    chain = {"job_name": "top", "working_directory": "top", "task_list": [
        {"task": "null", "name": "plain", "outputs": {"a": "a.txt"}},
        {"task": "execution_for_loop", "parameter": "i", "values": [0, 1], "job_name": "sub",
         "working_directory": "elsewhere",
         "task_list": [{"task": "execution_chain", "task_list": [
             {"task": "null", "name": "deep", "outputs": {"b": "'b_{i}.txt'.format(**metadata)"}},
             {"task": "null", "name": "own", "job_name": "own", "working_directory": "third",
              "outputs": {"c": "'c_{i}.txt'.format(**metadata)"}}]}]},
        {"task": "null", "name": "reader", "inputs": {"b": "../elsewhere/b_1.txt"}},
    ]}
    plan = expand_chain(chain, "overrides.json", read_registries([]))
    seen = {(node.name, node.metadata.get("i")): (node.job_name, node.working_directory, sorted(node.outputs.values()))
            for node in plan.worker_tasks}
    assert seen == {
        ("plain", None): ("top", "top", ["top/a.txt"]),
        ("deep", 0): ("sub", "elsewhere", ["elsewhere/b_0.txt"]), ("deep", 1): ("sub", "elsewhere", ["elsewhere/b_1.txt"]),
        ("own", 0): ("own", "third", ["third/c_0.txt"]), ("own", 1): ("own", "third", ["third/c_1.txt"]),
        ("reader", None): ("top", "top", []),
    }
    reader = next(node for node in plan.nodes if node.name == "reader")
    assert [(producer.name, path) for producer, path, _s in reader.file_dependencies] == [("deep", "elsewhere/b_1.txt")]
    controls = [(node.task_type, node.job_name, node.working_directory) for node in plan.nodes if node.is_control]
    assert controls == [("execution_chain", "top", "top"), ("execution_for_loop", "sub", "elsewhere"),
                        ("execution_chain", "sub", "elsewhere"), ("execution_chain", "sub", "elsewhere")]


def test_control_tasks_never_reach_a_worker(eas_sqlite):
    submit_chain(eas_sqlite.engine, json.load(open(os.path.join(FEATURES, "nested_loops.json"))), "nested.json")
    scheduler = Scheduler(eas_sqlite.engine, make_queue(eas_sqlite.settings, eas_sqlite.engine))
    scheduler.run_pass()
    with eas_sqlite.engine.connect() as connection:
        queued_types = connection.execute(sa.select(schema.attempts.c.task_type).distinct()).scalars().all()
        control_attempts = connection.execute(sa.select(sa.func.count()).select_from(schema.tasks).where(
            schema.tasks.c.is_control.is_(True), schema.tasks.c.attempt_count > 0)).scalar_one()
    assert sorted(queued_types) == ["synthesise_lightcurve"] and control_attempts == 0


FAILING_LOOP = {"job_name": "bad_loop", "task_list": [
    {"task": "execution_do_while_loop", "name": "loop", "iteration_name": "n", "requires_metadata_from_child": ["step"],
     "repeat_criterion": "(requested_metadata['step']['residual'] > 1)",
     "task_list": [{"task": "shell", "name": "step", "command": "echo '{\"value\": 1}' > \"$EAS_METADATA_OUT\""}]},
    {"task": "shell", "name": "source", "command": "echo '{\"ok\": true}' > \"$EAS_METADATA_OUT\""},
    {"task": "shell", "name": "late", "requires_metadata_from": ["source"],
     "command": "('echo %s' % requested_metadata['source']['missing'])"},
]}
GOOD_JOB = {"job_name": "good", "task_list": [
    {"task": "execution_for_loop", "parameter": "i", "values": [1, 2, 3], "task_list": [{"task": "null"}]},
    {"task": "execution_do_while_loop", "iteration_name": "n", "repeat_criterion": "(metadata['n_index'] < 2)",
     "task_list": [{"task": "null"}]}]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_time_expression_error_fails_only_that_task(backend, tmp_path):
    """A criterion reading metadata a task never wrote fails the control task with the expression and the key; the
    scheduler keeps going and the other job finishes."""
    env = make_environment(backend, tmp_path)
    bad_id, _plan = submit_chain(env.engine, FAILING_LOOP, "bad.json")
    good_id, _plan = submit_chain(env.engine, GOOD_JOB, "good.json")
    worker = env.start_worker("--concurrency", "2", "--poll-interval", "0.1")
    scheduler = Scheduler(env.engine, make_queue(env.settings, env.engine))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            scheduler.run_pass()
            with read_transaction(env.engine) as connection:
                if reports.job_is_finished(connection, bad_id) and reports.job_is_finished(connection, good_id):
                    break
            time.sleep(0.05)
        with read_transaction(env.engine) as connection:
            bad = {row["task_name"]: row for row in reports.job_tree(connection, job_id=bad_id)}
            good = reports.job_tree(connection, job_id=good_id)
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        env.engine.dispose()
    assert bad["loop"]["state"] == "failed"
    error = bad["loop"]["error"]
    assert "repeat_criterion" in error and "(requested_metadata['step']['residual'] > 1)" in error, error
    assert "missing key 'residual'" in error and "task_list[0]" in error, error
    assert bad["step"]["state"] == "done" and bad["source"]["state"] == "done"
    assert bad["late"]["state"] == "failed" and bad["late"]["attempts"] == 0
    assert "field 'command'" in bad["late"]["error"] and "missing key 'missing'" in bad["late"]["error"]
    assert {row["state"] for row in good} == {"done"}
    assert len([row for row in good if row["task_type"] == "null"]) == 3 + 2


def test_ten_thousand_leaf_shape_expands_and_submits(eas_sqlite):
    """The benchmark's three nested loops (10 x 10 x 100 there), here 4 x 5 x 20 to stay quick."""
    chain = {"task_list": [{"task": "execution_for_loop", "parameter": "a", "values": list(range(4)), "task_list": [
        {"task": "execution_for_loop", "parameter": "b", "linear_range": [0, 1, 5], "task_list": [
            {"task": "execution_for_loop", "parameter": "c", "log_range": [1, 1000, 20], "task_list": [
                {"task": "null", "label": "'{a_index}-{b_index}-{c_index}'.format(**metadata)"}]}]}]}]}
    _job, plan = submit_chain(eas_sqlite.engine, chain, "big.json")
    assert len(plan.worker_tasks) == 400 and len(plan.nodes) == 1 + 1 + 4 + 20 + 400
    with eas_sqlite.engine.connect() as connection:
        rows = connection.execute(sa.select(schema.tasks.c.state, schema.tasks.c.is_control, sa.func.count())
                                  .group_by(schema.tasks.c.state, schema.tasks.c.is_control)).all()
        labels = connection.execute(sa.select(schema.tasks.c.description, schema.tasks.c.metadata)
                                    .where(schema.tasks.c.task_type == "null").order_by(schema.tasks.c.id)).all()
        children = connection.execute(sa.select(sa.func.count()).select_from(schema.task_dependencies)).scalar_one()
    assert {(state, bool(control)): n for state, control, n in rows} == {("ready", False): 400, ("running", True): 26}
    assert children == 425  # every task but the root is a child its parent waits for
    assert [json.loads(row.description)["label"] for row in labels[:3]] == ["0-0-0", "0-0-1", "0-0-2"]
    last = json.loads(labels[-1].metadata)
    assert (last["a"], last["b"], last["c_index"]) == (3, 1, 19) and math.isclose(last["c"], 1000)


def test_files_made_inside_run_time_subtrees_are_waited_for_as_a_whole():
    """A reader outside a conditional decided at run time, or outside a do-while, waits for the whole subtree;
    a reader inside the do-while waits only for the task of its own pass."""
    chain = {"task_list": [
        {"task": "null", "name": "detect"},
        {"task": "execution_conditional", "name": "branch", "requires_metadata_from": ["detect"],
         "criterion": "(requested_metadata['detect']['ok'])",
         "task_list": [{"task": "execution_for_loop", "parameter": "k", "values": [0, 1], "task_list": [
             {"task": "null", "outputs": {"part": "'part_{k_index}.txt'.format(**metadata)"}}]}],
         "else_task_list": [{"task": "null", "outputs": {"part": "part_1.txt"}}]},
        {"task": "execution_do_while_loop", "name": "loop", "iteration_name": "n", "repeat_criterion": "(False)",
         "task_list": [{"task": "null", "name": "write", "outputs": {"f": "state.txt"}},
                       {"task": "null", "name": "inside", "inputs": {"f": "state.txt"}}]},
        {"task": "null", "name": "reader", "inputs": {"a": "part_0.txt", "b": "part_1.txt", "c": "state.txt"}},
    ]}
    plan = expand_chain(chain, "subtrees.json", read_registries([]))
    nodes = {node.name: node for node in plan.nodes if node.name}
    assert not nodes["branch"].expanded and nodes["branch"].deferred_outputs == ["part_0.txt", "part_1.txt",
                                                                                 "part_1.txt"]
    assert [(producer.name, path) for producer, path, _s in nodes["reader"].file_dependencies] == [
        ("branch", "part_0.txt"), ("branch", "part_1.txt"), ("loop", "state.txt")]
    assert [(producer.name, path) for producer, path, _s in nodes["inside"].file_dependencies] == [
        ("write", "state.txt")]


COMBINATION = {"job_name": "combo", "task_list": [
    {"task": "shell", "name": "limit", "command": "echo '{\"passes\": 3}' > \"$EAS_METADATA_OUT\""},
    {"task": "execution_do_while_loop", "name": "loop", "iteration_name": "n", "requires_metadata_from": ["limit"],
     "repeat_criterion": "(metadata['n_index'] < requested_metadata['limit']['passes'])",
     "task_list": [{"task": "null", "name": "body"}]},
    {"task": "execution_for_loop", "parameter": "i", "values": [1, 2, 3], "task_list": [
        {"task": "execution_conditional", "criterion": "(metadata['i'] > 1)",
         "task_list": [{"task": "null", "name": "big"}], "else_task_list": [{"task": "null", "name": "small"}]}]},
]}


def test_do_while_waiting_for_a_sibling_and_conditionals_decided_at_submission(eas_sqlite, tmp_path):
    path = tmp_path / "combo.json"
    path.write_text(json.dumps(COMBINATION))
    dry = eas_sqlite.script("job_submission/submit.py", "--tasks", str(path), "--dry-run").stdout
    assert "#2 execution_do_while_loop 'loop'  -- EXPANDS AT RUN TIME once #1 finished; repeats while" in dry
    assert "#4 execution_conditional [i=1]  -- (metadata['i'] > 1) is False: runs else_task_list" in dry
    eas_sqlite.script("job_submission/run_local.py", "--tasks", str(path), "--workers", "1")
    tree = json.loads(eas_sqlite.script("diagnostics/display_job_tree.py", "--format", "json").stdout)
    names = sorted((row["task_name"], row["inherited"].get("i"), row["inherited"].get("n_index"))
                   for row in tree if row["task_type"] == "null")
    assert names == [("big", 2, None), ("big", 3, None), ("body", None, 1), ("body", None, 2), ("body", None, 3),
                     ("small", 1, None)]
    # only the branch taken exists: decided at submission, so the dry run already showed it
    assert counts(tree)["execution_conditional"] == 3 and {row["state"] for row in tree} == {"done"}


def test_requires_metadata_from_a_sibling_with_a_computed_name():
    chain = {"task_list": [{"task": "execution_for_loop", "parameter": "i", "values": [3, 4], "task_list": [
        {"task": "null", "name": "('fit_%d' % metadata['i'])"},
        {"task": "null", "name": "use", "requires_metadata_from": ["fit_3"], "x": "(requested_metadata['fit_3'])"}]}]}
    known = read_registries([])
    with pytest.raises(Exception) as caught:  # in the second iteration the sibling is called fit_4
        expand_chain(chain, "computed.json", known)
    assert "task_list[0]{i_index=1}.task_list[1] (with i=4): field 'requires_metadata_from' names 'fit_3', which is " \
           "not an earlier sibling (earlier siblings: 'fit_4')" in str(caught.value)
    chain["task_list"][0]["values"] = [3]
    plan = expand_chain(chain, "computed.json", known)
    use = next(node for node in plan.nodes if node.name == "use")
    assert [source.name for source in use.metadata_from] == ["fit_3"] and use.needs_evaluation
