"""Concurrency limits by key, with real worker processes: at most N attempts of one key run at once, on both
queues; a worker killed while it holds a slot gives it back once its attempt is stalled; explain_task says
when a task waits for its limit; a bad ``concurrency_limit`` is one line naming the file, the task and the
field.

The proof of the limit comes from the attempts table: an attempt holds its slot from the claim that set its
``started_at`` to the completion that set its ``ended_at``, so the number of those intervals that overlap at
any instant is the number of slots in use, and it never exceeds the limit (and reaches it, so the limit is
not just running them one at a time).
"""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa
from conftest import PROJECT_ROOT, make_environment
from fault_helpers import cluster_factory, wait_for  # noqa: F401 (fixture)
from test_submit_and_run import run_named_workers, submit, write_chain

from eas_controller.concurrency import LimitError, evaluate_key, parse_limit
from eas_controller.database.engine import write_transaction
from eas_controller.database.schema import attempts, concurrency_limits, tasks
from eas_controller.registry import RegistryError, read_registries, read_registry_file, store_registry
from eas_controller.store import limits as limit_store

LIMITED_TYPES = """
task_types:
  limited_sleep:
    description: fault_sleep_write, at most two at once (key = the type's name)
    python: tests.task_implementations:fault_sleep_write
    resources: {cpu: 1, gpu: 0, memory_gb: 0}
    concurrency_limit: {max: 2}
  star_sleep:
    description: fault_sleep_write, one at a time per star (key from the task's metadata)
    python: tests.task_implementations:fault_sleep_write
    resources: {cpu: 1, gpu: 0, memory_gb: 0}
    concurrency_limit: {key: "('star-%s' % metadata['star'])", max: 1}
"""

WORKERS = 4
SLOTS = 4
LIMITED = 16


def load_limited_types(environment, tmp_path) -> None:
    path = tmp_path / "limited_types.yaml"
    path.write_text(LIMITED_TYPES)
    with write_transaction(environment.engine) as connection:
        store_registry(connection, read_registries([os.path.join(PROJECT_ROOT, "tests", "task_types_test.yaml"),
                                                    str(path)]))


def most_at_once(intervals) -> int:
    """The largest number of (start, end) intervals that overlap at one instant (an end before a start at
    the same instant: the slot was given back before it was taken again)."""
    events = sorted([(start, 1) for start, _end in intervals] + [(end, -1) for _start, end in intervals])
    current = peak = 0
    for _time, step in events:
        current += step
        peak = max(peak, current)
    return peak


def limited_intervals(engine, job_id: int, task_type: str, states=("succeeded",)) -> list[tuple[float, float]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(attempts.c.started_at, attempts.c.ended_at).join(tasks, tasks.c.id == attempts.c.task_id)
            .where(tasks.c.job_id == job_id, tasks.c.task_type == task_type, attempts.c.state.in_(states))).all()
    return [(row.started_at, row.ended_at) for row in rows]


@pytest.mark.parametrize("backend,queue", [("sqlite", "sql"), ("mysql", "sql"), ("postgresql", "sql"),
                                           ("mysql", "amqp"), ("postgresql", "amqp")])
def test_four_workers_of_four_slots_never_run_more_than_two_of_a_limited_type(backend, queue, tmp_path):
    eas = make_environment(backend, tmp_path, queue=queue)
    try:
        load_limited_types(eas, tmp_path)
        job_id = submit(eas, {"job_name": "limited", "task_list": [
            {"task": "execution_for_loop", "parameter": "i", "values": list(range(LIMITED)), "task_list": [
                {"task": "limited_sleep", "seconds": 0.5}]},
            # unlimited work of another type: the claims look past the full key and run it meanwhile
            {"task": "execution_for_loop", "parameter": "j", "values": list(range(8)), "task_list": [
                {"task": "fault_sleep_write", "seconds": 0.5}]},
        ]}, tmp_path)
        with eas.engine.connect() as connection:
            keys = connection.execute(sa.select(tasks.c.task_type, tasks.c.limit_key).where(
                tasks.c.job_id == job_id, tasks.c.is_control.is_(False)).distinct()).all()
            declared = connection.execute(sa.select(concurrency_limits.c.key, concurrency_limits.c.max_running)).all()
        assert sorted(keys) == [("fault_sleep_write", None), ("limited_sleep", "limited_sleep")]
        assert declared == [("limited_sleep", 2)]

        processes = run_named_workers(eas, [["--concurrency", str(SLOTS), "--cpus", str(SLOTS), "--name", "limit-%d" % number]
                                            for number in range(1, WORKERS + 1)], timeout=300)
        logs = "".join(open(process.log_path).read() for process in processes)
        if queue == "amqp":  # deliveries beyond the limit were held back in SQL, then published again
            assert "held back" in logs and "whose concurrency limit is full" in logs, logs[-3000:]

        with eas.engine.connect() as connection:
            states = dict(connection.execute(sa.select(tasks.c.state, sa.func.count()).where(
                tasks.c.job_id == job_id, tasks.c.is_control.is_(False)).group_by(tasks.c.state)).all())
            per_task = connection.execute(sa.select(attempts.c.task_id, sa.func.count()).join(
                tasks, tasks.c.id == attempts.c.task_id).where(tasks.c.job_id == job_id).group_by(attempts.c.task_id)).all()
        assert states == {"done": LIMITED + 8}
        assert {count for _task, count in per_task} == {1}  # nothing failed, stalled or ran twice
        limited = limited_intervals(eas.engine, job_id, "limited_sleep")
        assert len(limited) == LIMITED
        assert most_at_once(limited) == 2  # never more than two, and two did run side by side
        unlimited = limited_intervals(eas.engine, job_id, "fault_sleep_write")
        everything = limited + unlimited
        assert most_at_once(everything) > 2  # the other type was not held up behind the limit
        print("\n%s/%s: at most %d limited attempts at once, %d of all at once" % (
            backend, queue, most_at_once(limited), most_at_once(everything)))
    finally:
        eas.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_worker_killed_while_it_holds_a_slot_gives_it_back_once_stalled(cluster_factory, tmp_path, backend):  # noqa: F811
    cluster = cluster_factory(backend, lease_seconds=2, retry_backoff_s=0.2)
    load_limited_types(cluster.environment, tmp_path)
    journal = tmp_path / "journal"
    cluster.submit([{"task": "limited_sleep", "name": "t%d" % i, "seconds": 1.5, "journal": str(journal)}
                    for i in range(6)], job_name="killed")
    cluster.scheduler()
    doomed = cluster.worker("--concurrency", "4", "--cpus", "4", name="doomed")
    wait_for(lambda: len(journal.read_text().splitlines()) >= 2 if journal.exists() else False, 60,
             "the doomed worker to start two limited tasks")
    doomed.kill()  # SIGKILL while it holds both slots of the key
    doomed.wait()
    assert cluster.value("SELECT COUNT(*) FROM eas_attempts WHERE state = 'running'") == 2
    with cluster.engine.begin() as connection:
        assert limit_store.free_slots(connection, ["limited_sleep"]) == {"limited_sleep": 0}
    # no worker runs now: the scheduler stalls the two attempts once their lease has expired
    wait_for(lambda: cluster.value("SELECT COUNT(*) FROM eas_attempts WHERE state = 'stalled'") == 2, 60,
             "the scheduler to stall the killed worker's attempts")
    with cluster.engine.begin() as connection:
        assert limit_store.free_slots(connection, ["limited_sleep"]) == {"limited_sleep": 2}
    cluster.worker("--concurrency", "4", "--cpus", "4", name="survivor")
    wait_for(cluster.worker_tasks_finished, 120, "every task to finish")

    assert dict(cluster.rows("SELECT state, COUNT(*) FROM eas_tasks WHERE is_control = :no GROUP BY state",
                             no=False)) == {"done": 6}
    lost = cluster.rows("SELECT * FROM eas_attempts WHERE state = 'stalled'")
    assert len(lost) == 2 and all(attempt.worker_name == "doomed" for attempt in lost)
    survivor = cluster.rows("SELECT * FROM eas_attempts WHERE worker_name = 'survivor' ORDER BY started_at")
    assert len(survivor) == 6  # the two lost tasks ran again, and the others
    assert min(row.started_at for row in survivor) >= min(row.ended_at for row in lost)  # once a slot came back
    slots = [(row.started_at, row.ended_at) for row in cluster.rows(
        "SELECT started_at, ended_at FROM eas_attempts WHERE state IN ('succeeded', 'stalled')")]
    assert most_at_once(slots) == 2


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_explain_task_reports_the_limit_a_queued_task_waits_for(cluster_factory, tmp_path, backend):  # noqa: F811
    cluster = cluster_factory(backend)
    load_limited_types(cluster.environment, tmp_path)
    cluster.submit([{"task": "execution_for_loop", "parameter": "star", "values": ["a", "a", "b"], "task_list": [
        {"task": "star_sleep", "seconds": 60}]}], job_name="explain_limit")
    keys = [row.limit_key for row in cluster.rows(
        "SELECT limit_key FROM eas_tasks WHERE task_type = 'star_sleep' ORDER BY id")]
    assert keys == ["star-a", "star-a", "star-b"]
    cluster.scheduler()
    cluster.worker("--concurrency", "3", "--cpus", "3", "--grace-period", "1", name="w")
    wait_for(lambda: cluster.value("SELECT COUNT(*) FROM eas_tasks WHERE state = 'running' AND is_control = :no",
                                   no=False) == 2, 60, "one task of each star to run")
    waiting = cluster.rows("SELECT id FROM eas_tasks WHERE task_type = 'star_sleep' AND state = 'queued'")
    assert len(waiting) == 1
    running = cluster.rows("SELECT a.id FROM eas_attempts a JOIN eas_tasks t ON t.id = a.task_id "
                           "WHERE a.state = 'running' AND t.limit_key = 'star-a'")
    out = cluster.environment.script("diagnostics/explain_task.py", str(waiting[0].id), "--format", "json")
    result = json.loads(out.stdout)
    assert "waiting_concurrency_limit" in result["codes"], result["codes"]
    reason = next(r for r in result["reasons"] if r["code"] == "waiting_concurrency_limit")
    assert "waits for concurrency limit star-a: 1 of 1 running (attempt %d)" % running[0].id in reason["text"]
    assert result["concurrency_limit"] == dict(key="star-a", max=1, running=1, running_attempts=[running[0].id])
    table = cluster.environment.script("diagnostics/explain_task.py", str(waiting[0].id)).stdout
    assert "waits for concurrency limit star-a: 1 of 1 running" in table


# -- validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit,field", [
    ("{max: 0}", "concurrency_limit.max"),
    ("{max: 2.5}", "concurrency_limit.max"),
    ("{max: true}", "concurrency_limit.max"),
    ("{key: x}", "concurrency_limit.max"),
    ("{max: 2, keys: x}", "'keys'"),
    ("{max: 2, key: \"(metadata['star'\"}", "concurrency_limit.key"),
    ("{max: 2, key: 7}", "concurrency_limit.key"),
    ("3", "concurrency_limit"),
])
def test_a_bad_concurrency_limit_in_a_registry_is_one_line_naming_file_type_and_field(tmp_path, limit, field):
    path = tmp_path / "types.yaml"
    path.write_text("task_types:\n  bad_type:\n    command: 'true'\n    concurrency_limit: %s\n" % limit)
    with pytest.raises(RegistryError) as raised:
        read_registry_file(str(path))
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "'bad_type'" in message and field in message, message


@pytest.mark.parametrize("limit,field", [
    ({"max": -1}, "concurrency_limit.max"),
    ({"max": 2, "size": 3}, "'size'"),
    ({"max": 2, "key": "(metadata['nope'])"}, "concurrency_limit.key"),
    ({"max": 2, "key": "([1, 2])"}, "concurrency_limit.key"),
])
def test_a_bad_concurrency_limit_in_a_chain_is_one_line_naming_file_task_and_field(eas_sqlite, tmp_path, limit, field):
    chain = {"task_list": [{"task": "null", "name": "ok"}, {"task": "null", "name": "bad", "concurrency_limit": limit}]}
    path = write_chain(tmp_path, chain, "bad_limit.json")
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", path, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad_limit.json" in lines[0] and "task_list[1]" in lines[0] and field in lines[0], lines
    with eas_sqlite.engine.connect() as connection:  # one transaction: nothing was written
        assert connection.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() == 0


def test_a_key_the_registry_computes_from_metadata_must_be_there(eas_sqlite, tmp_path):
    load_limited_types(eas_sqlite, tmp_path)
    path = write_chain(tmp_path, {"task_list": [{"task": "star_sleep", "seconds": 0}]}, "no_star.json")
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "no_star.json" in lines[0] and "concurrency_limit.key" in lines[0] and "star_sleep" in lines[0], lines


def test_a_task_may_declare_its_own_limit_and_key(eas_sqlite, tmp_path):
    chain = {"task_list": [{"task": "execution_for_loop", "parameter": "field", "values": [3, 3, 4], "task_list": [
        {"task": "null", "concurrency_limit": {"key": "('field-%d' % metadata['field'])", "max": 2}}]},
        {"task": "null", "concurrency_limit": {"max": 5}}]}
    submit(eas_sqlite, chain, tmp_path)
    with eas_sqlite.engine.connect() as connection:
        keys = connection.execute(sa.select(tasks.c.limit_key).where(tasks.c.is_control.is_(False))
                                  .order_by(tasks.c.id)).scalars().all()
        declared = dict(connection.execute(sa.select(concurrency_limits.c.key, concurrency_limits.c.max_running)).all())
    assert sorted(keys) == ["field-3", "field-3", "field-4", "null"]
    assert declared == {"field-3": 2, "field-4": 2, "null": 5}


def test_the_key_rules():
    limit = parse_limit({"key": "('%s-%s' % (metadata['star'], metadata['camera']))", "max": 3})
    assert evaluate_key(limit, "t", {"star": "s1"}, {"camera": 2}) == "s1-2"  # metadata, then the task's fields
    assert evaluate_key(parse_limit({"max": 1}), "my_type", {}, {}) == "my_type"
    assert evaluate_key(parse_limit({"key": "gpu-pool", "max": 1}), "t", {}, {}) == "gpu-pool"
    with pytest.raises(LimitError, match="at most 255"):
        evaluate_key(parse_limit({"key": "('x' * 300)", "max": 1}), "t", {}, {})
