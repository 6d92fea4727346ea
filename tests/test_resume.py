"""submit.py --resume: unchanged tasks take their earlier results over; new, changed and downstream tasks run.

Real worker processes on every SQL back end (the ``eas`` fixture), as in test_submit_and_run.py.
"""

import json

import sqlalchemy as sa

from eas_controller.database.schema import attempts, metadata_items, product_versions, products, tasks
from test_submit_and_run import run_workers, submit, write_chain

CHANGED = (1, 2)  # (i_index, j_index) of the one task whose command changes in the second submission


def grid_chain(j_values, change: bool) -> dict:
    """A loop over 3 values of i times a loop over j: a cheap ``make`` task, then ``show`` reading its file."""
    extra = "(7 if (metadata['i_index'], metadata['j_index']) == %r else 1)" % (CHANGED,) if change else "1"
    make_command = "('echo %%s %%s %%s > \"$EAS_OUTPUT_POINT\"' %% (metadata['i'], metadata['j'], %s))" % extra
    point = "'p_{i_index}_{j_index}.txt'.format(**metadata)"
    return {"job_name": "grid", "working_directory": "grid", "task_list": [
        {"task": "execution_for_loop", "parameter": "i", "values": [1, 2, 3], "task_list": [
            {"task": "execution_for_loop", "parameter": "j", "values": j_values, "task_list": [
                {"task": "shell", "name": "make", "command": make_command, "outputs": {"point": point}},
                {"task": "shell", "name": "show", "inputs": {"point": point},
                 "outputs": {"summary": "'s_{i_index}_{j_index}.txt'.format(**metadata)"},
                 "command": "cat \"$EAS_INPUT_POINT\" > \"$EAS_OUTPUT_SUMMARY\"; "
                            "echo '{\"lines\": 1}' > \"$EAS_METADATA_OUT\""},
            ]},
        ]},
    ]}


def worker_tasks(eas, job_id: int) -> dict:
    """{(name, i_index, j_index): task row} of a job's worker tasks."""
    with eas.engine.connect() as connection:
        rows = connection.execute(sa.select(tasks).where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False))).all()
    result = {}
    for row in rows:
        metadata = json.loads(row.metadata)
        result[(row.name, metadata["i_index"], metadata["j_index"])] = row
    return result


def attempt_counts(eas) -> dict:
    """{chain path: attempts of every task at that path, in all jobs}."""
    with eas.engine.connect() as connection:
        return dict(connection.execute(sa.select(tasks.c.chain_path, sa.func.count(attempts.c.id))
                                       .join(attempts, attempts.c.task_id == tasks.c.id)
                                       .group_by(tasks.c.chain_path)).all())


def made_md5(eas, task_ids) -> dict:
    """{task id: md5 of its made product}."""
    with eas.engine.connect() as connection:
        return dict(connection.execute(sa.select(products.c.task_id, product_versions.c.md5)
                                       .join(product_versions, product_versions.c.id == products.c.latest_version_id)
                                       .where(products.c.task_id.in_(list(task_ids)), products.c.state == "made")).all())


def expected_runs() -> dict:
    """{(name, i_index, j_index): reason} of the tasks the second submission runs; the rest are reused."""
    expected = {}
    for i_index in range(3):
        expected[("make", i_index, 4)] = "new"
        expected[("show", i_index, 4)] = "new"
    expected[("make",) + CHANGED] = "changed command"
    expected[("show",) + CHANGED] = "upstream re-runs"
    return expected


def test_a_grown_and_edited_grid_resumes_only_the_new_the_changed_and_their_dependants(eas, tmp_path):
    first = submit(eas, grid_chain([10, 20, 30, 40], change=False), tmp_path, "grid.json")
    run_workers(eas, 2)
    before = worker_tasks(eas, first)
    assert len(before) == 24 and {row.state for row in before.values()} == {"done"}
    before_md5 = made_md5(eas, [row.id for row in before.values()])
    assert len(before_md5) == 24

    path = write_chain(tmp_path, grid_chain([10, 20, 30, 40, 50], change=True), "grid.json")
    dry = eas.script("job_submission/submit.py", "--tasks", path, "--resume", "--dry-run", "--format", "json")
    decisions = json.loads(dry.stdout)
    assert len(decisions) == 30
    expected = expected_runs()
    table = eas.script("job_submission/submit.py", "--tasks", path, "--resume", "--dry-run")
    assert "resume: 22 of 30 worker tasks reused, 8 to run" in table.stdout, table.stdout
    for reason in ("new", "changed command", "upstream re-runs", "reused"):
        assert reason in table.stdout, table.stdout
    with eas.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() == 24 + 5  # the dry runs wrote nothing

    submitted = eas.script("job_submission/submit.py", "--tasks", path, "--resume")
    assert "resume: 22 of 30 worker tasks reused, 8 to run" in submitted.stdout, submitted.stdout
    second = int(submitted.stdout.split()[2])
    after = worker_tasks(eas, second)
    by_path = {row.chain_path: key for key, row in after.items()}
    assert {by_path[d["chain_path"]]: d["reason"] for d in decisions if d["action"] == "run"} == expected
    assert all(d["reason"] == "reused" for d in decisions if d["action"] == "reuse")
    reused_keys = set(after) - set(expected)
    assert len(reused_keys) == 22
    for key in reused_keys:  # done at once, with no attempt of their own
        assert after[key].state == "done" and after[key].attempt_count == 0, key
    run_workers(eas, 2)
    after = worker_tasks(eas, second)
    with eas.engine.connect() as connection:  # the loops and the chain finished too
        job_states = connection.execute(sa.select(tasks.c.state).where(tasks.c.job_id == second)).scalars().all()
    assert len(job_states) == 30 + 5 and set(job_states) == {"done"}

    counts = attempt_counts(eas)
    for key, row in after.items():
        if key in expected:
            assert counts[row.chain_path] == (1 if expected[key] == "new" else 2), key
            assert row.attempt_count == 1 and row.reused_from_attempt_id is None, key
        else:
            assert counts[row.chain_path] == 1, key  # the first run's attempt only
            with eas.engine.connect() as connection:
                source = connection.execute(sa.select(attempts.c.task_id, attempts.c.state)
                                            .where(attempts.c.id == row.reused_from_attempt_id)).one()
            assert source == (before[key].id, "succeeded"), key
    after_md5 = made_md5(eas, [row.id for row in after.values()])
    for key in reused_keys:
        assert after_md5[after[key].id] == before_md5[before[key].id], key
    assert after_md5[after[("make",) + CHANGED].id] != before_md5[before[("make",) + CHANGED].id]
    assert after_md5[after[("show",) + CHANGED].id] != before_md5[before[("show",) + CHANGED].id]
    with eas.engine.connect() as connection:  # the output metadata of a reused task came along
        copied = connection.execute(sa.select(metadata_items.c.key, metadata_items.c.value).where(
            metadata_items.c.task_id == after[("show", 0, 0)].id, metadata_items.c.scope == "task")).all()
    assert [(key, json.loads(value)) for key, value in copied] == [("lines", 1)]
    explained = eas.script("diagnostics/explain_task.py", str(after[("show", 0, 0)].id))
    assert "reused the results of attempt 1 of task %d" % before[("show", 0, 0)].id in explained.stdout, explained.stdout

    again = eas.script("job_submission/submit.py", "--tasks", path, "--resume", "--dry-run", "--format", "json")
    assert {d["reason"] for d in json.loads(again.stdout)} == {"reused"}  # a third look: nothing left to run


def test_resume_of_an_unknown_job_is_one_clear_line(eas, tmp_path):
    path = write_chain(tmp_path, grid_chain([10], change=False), "grid.json")
    empty = eas.script("job_submission/submit.py", "--tasks", path, "--resume", check=False)
    assert empty.returncode == 2 and "Traceback" not in empty.stderr, empty.stderr
    assert empty.stderr.strip().splitlines() == [
        "error: %s: --resume: no earlier job named 'grid' in this database; the database has no jobs yet" % path]
    submit(eas, grid_chain([10], change=False), tmp_path, "grid.json")
    other = eas.script("job_submission/submit.py", "--tasks", path, "--resume", "--job-name", "gird", "--dry-run",
                       check=False)
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [
        "error: %s: --resume: no earlier job named 'gird' in this database; did you mean 'grid' (--job-name)?"
        % path], other.stderr
    with eas.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() == 6 + 5


def test_the_chain_field_resumes_and_starts_a_new_job_fresh(eas, tmp_path):
    chain = dict(grid_chain([10, 20], change=False), resume=True)
    first = eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, chain, "grid.json"))
    assert "resume: 0 of 12 worker tasks reused, 12 to run" in first.stdout, first.stdout
    run_workers(eas, 1)
    second = eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, chain, "grid.json"))
    assert "resume: 12 of 12 worker tasks reused, 0 to run" in second.stdout, second.stdout
    bad = eas.script("job_submission/submit.py", "--tasks",
                     write_chain(tmp_path, dict(chain, resume="yes"), "bad.json"), check=False)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("field 'resume' must be true or false, not a string")
    plain = eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, grid_chain([10], False), "p.json"),
                       "--format", "json", check=False)
    assert plain.returncode == 2 and "add --resume" in plain.stderr, plain.stderr


def test_fields_evaluated_from_requested_metadata_are_compared_once_evaluated(eas_sqlite, tmp_path):
    eas = eas_sqlite
    chain = {"job_name": "late", "task_list": [
        {"task": "shell", "name": "plan", "command": "echo '{\"n\": 3}' > \"$EAS_METADATA_OUT\""},
        {"task": "shell", "name": "use", "requires_metadata_from": ["plan"], "outputs": {"out": "n.txt"},
         "command": "('echo %d > \"$EAS_OUTPUT_OUT\"' % requested_metadata['plan']['n'])"},
    ]}
    path = write_chain(tmp_path, chain, "late.json")
    eas.script("job_submission/submit.py", "--tasks", path)
    run_workers(eas, 1)
    for _round in range(2):  # reused, then reused again from the reused copy
        resumed = eas.script("job_submission/submit.py", "--tasks", path, "--resume", "--format", "json")
        assert [d["reason"] for d in json.loads(resumed.stdout)["decisions"]] == ["reused", "reused"], resumed.stdout
    changed = dict(chain, task_list=[dict(chain["task_list"][0], command="echo '{\"n\": 4}' > \"$EAS_METADATA_OUT\""),
                                     chain["task_list"][1]])
    dry = eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, changed, "late.json"), "--resume",
                     "--dry-run", "--format", "json")
    assert [d["reason"] for d in json.loads(dry.stdout)] == ["changed command", "upstream re-runs"]


def test_a_long_chain_of_dependencies_is_decided_in_order(eas_sqlite, tmp_path):
    """1,500 tasks each reading the file of the one before: decided without deep recursion, readers after
    their producers (listed in chain order, all new: nothing ran)."""
    steps = [{"task": "shell", "command": "true", "outputs": {"f": "f0.txt"}}] + [
        {"task": "shell", "command": "true", "inputs": {"f": "f%d.txt" % (n - 1)}, "outputs": {"f": "f%d.txt" % n}}
        for n in range(1, 1500)]
    path = write_chain(tmp_path, {"job_name": "long", "task_list": steps[::-1]}, "long.json")
    eas_sqlite.script("job_submission/submit.py", "--tasks", path)
    dry = eas_sqlite.script("job_submission/submit.py", "--tasks", path, "--resume", "--dry-run", "--format", "json")
    decisions = json.loads(dry.stdout)
    assert len(decisions) == 1500 and {d["reason"] for d in decisions} == {"new"}


def test_raising_a_task_types_version_runs_its_tasks_again(eas_sqlite, tmp_path):
    eas = eas_sqlite
    path = write_chain(tmp_path, grid_chain([10], change=False), "grid.json")
    eas.script("job_submission/submit.py", "--tasks", path)
    run_workers(eas, 1)
    registry = tmp_path / "shell_v2.yaml"
    registry.write_text('task_types:\n  shell:\n    command: "{command}"\n    version: 2\n')
    eas.script("database_initialisation/init_schema.py", "--task-types", str(registry))
    dry = eas.script("job_submission/submit.py", "--tasks", path, "--resume", "--dry-run", "--format", "json")
    assert [d["reason"] for d in json.loads(dry.stdout)] == ["changed task-type version"] * 6  # both are shell tasks
    with eas.engine.connect() as connection:
        assert set(connection.execute(sa.select(tasks.c.type_version).where(tasks.c.is_control.is_(False)))
                   .scalars()) == {"1"}
