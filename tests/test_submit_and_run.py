"""The walking skeleton end to end: submit.py, one scheduler pass, real burst workers, and what they record.

Every test here runs on SQLite, MariaDB and PostgreSQL (the ``eas`` fixture) with real worker processes.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import threading
import time

import pytest
import sqlalchemy as sa

from eas_controller.database import schema
from eas_controller.database.engine import make_engine
from eas_controller.database.schema import attempts, log_lines, metadata_items, product_versions, products, sql_queue, tasks
from eas_controller.queues import make_queue
from eas_controller.retries import RetryPolicy
from eas_controller.scheduler import Scheduler

# -- helpers shared with test_concurrency.py and test_registry.py ----------------------------------------


def write_chain(tmp_path, chain: dict, name: str = "job.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(chain, indent=1))
    return str(path)


def submit(eas, chain: dict, tmp_path, name: str = "job.json") -> int:
    """Submit with submit.py as a user would; returns the job id it printed."""
    result = eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, chain, name))
    match = re.search(r"submitted job (\d+) \(.*\): (\d+) tasks", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


@contextlib.contextmanager
def scheduler_running(eas, idle_wait: float = 0.02):
    """A scheduler in a thread of the test process, passing until the block ends (errors are re-raised)."""
    engine = make_engine(eas.settings.database_url)
    scheduler = Scheduler(engine, make_queue(eas.settings, engine), eas.settings.max_attempts)
    stop = threading.Event()
    errors = []

    def loop():
        try:
            while not stop.is_set():
                if not scheduler.run_pass().did_something:
                    stop.wait(idle_wait)
        except Exception as error:  # reported by the test, not lost in the thread
            errors.append(error)

    thread = threading.Thread(target=loop, name="test-scheduler", daemon=True)
    thread.start()
    try:
        yield scheduler
    finally:
        stop.set()
        thread.join(30)
        engine.dispose()
    if errors:
        raise errors[0]


def wait_for_workers(processes, timeout: float) -> None:
    """Wait for burst workers to exit 0; on timeout kill them and fail with their logs."""
    try:
        for process in processes:
            process.wait(timeout)
    except subprocess.TimeoutExpired:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        pytest.fail("workers did not finish within %g s:\n%s" % (timeout, worker_logs(processes)))
    for process in processes:
        assert process.returncode == 0, worker_logs(processes)


def worker_logs(processes) -> str:
    texts = []
    for process in processes:
        with open(process.log_path) as handle:
            texts.append("--- %s\n%s" % (process.log_path, handle.read()[-4000:]))
    return "\n".join(texts)


def run_workers(eas, count: int = 1, *args: str, timeout: float = 120) -> list:
    """Run ``count`` burst workers with a scheduler until nothing is left to do; returns the processes."""
    return run_named_workers(eas, [list(args)] * count, timeout)


def run_named_workers(eas, arguments: list[list[str]], timeout: float = 120) -> list:
    """Run one burst worker per list of arguments, with a scheduler, until nothing is left to do."""
    processes = [eas.start_worker("--burst", "--poll-interval", "0.1", *args) for args in arguments]
    try:
        with scheduler_running(eas):
            wait_for_workers(processes, timeout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return processes


def job_tasks(eas, job_id: int) -> dict:
    """{task name (or type): row} for the worker tasks of a job."""
    with eas.engine.connect() as connection:
        rows = connection.execute(sa.select(tasks).where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False))
                                  .order_by(tasks.c.id)).all()
    return {row.name or row.task_type: row for row in rows}


def attempts_of(eas, task_id: int) -> list:
    with eas.engine.connect() as connection:
        return connection.execute(sa.select(attempts).where(attempts.c.task_id == task_id).order_by(attempts.c.id)).all()


def log_of(eas, attempt_id: int) -> list:
    with eas.engine.connect() as connection:
        return connection.execute(sa.select(log_lines).where(log_lines.c.attempt_id == attempt_id)
                                  .order_by(log_lines.c.id)).all()


def table_counts(engine) -> dict:
    with engine.connect() as connection:
        return {table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                for table in schema.metadata_obj.sorted_tables}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# -- submit and promote ------------------------------------------------------------------------------------

def test_submit_prints_job_id_and_task_count(eas, tmp_path):
    chain = {"job_name": "counting", "task_list": [
        {"task": "null"},
        {"task": "execution_for_loop", "parameter": "x", "values": [1, 2, 3], "task_list": [{"task": "null"}]},
    ]}
    result = eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, chain))
    # chain + null + loop + 3 bodies
    match = re.search(r"^submitted job (\d+) \(counting\): 6 tasks \(4 to run on workers, 2 control-flow\)", result.stdout)
    assert match, result.stdout
    with eas.engine.connect() as connection:
        job_ids = connection.execute(sa.select(tasks.c.job_id).distinct()).scalars().all()
        assert connection.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() == 6
    assert job_ids == [int(match.group(1))]


@pytest.mark.parametrize("earlier_job", [False, True], ids=["empty-database", "after-a-job"])
def test_rejected_chain_leaves_no_rows(eas, tmp_path, earlier_job):
    if earlier_job:
        submit(eas, {"working_directory": "w", "task_list": [{"task": "write_text", "text": "x", "outputs": {"t": "made.txt"}}]},
               tmp_path, "first.json")
    before = table_counts(eas.engine)
    chain = {"job_name": "bad", "working_directory": "w", "task_list": [
        {"task": "write_text", "name": "a", "text": "a", "outputs": {"text": "a.txt"}},
        {"task": "execution_for_loop", "parameter": "i", "values": [1, 2], "task_list": [{"task": "null"}]},
        {"task": "concatenate", "name": "b", "inputs": {"a": "a.txt", "earlier": "made.txt" if earlier_job else "a.txt"},
         "outputs": {"joined": "b.txt"}},
        {"task": "concatenate", "name": "c", "inputs": {"a": "a.txt", "data": "nobody_makes_this.txt"},
         "outputs": {"joined": "c.txt"}},
    ]}
    path = write_chain(tmp_path, chain, "bad.json")
    result = eas.script("job_submission/submit.py", "--tasks", path, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert path in result.stderr and "task_list[3]" in result.stderr and "inputs.data" in result.stderr, result.stderr
    assert "nobody_makes_this.txt" in result.stderr and "Traceback" not in result.stderr
    assert table_counts(eas.engine) == before
    if not earlier_job:
        assert all(count == 0 for name, count in before.items() if name not in ("eas_schema_info", "eas_task_types"))


def test_one_scheduler_pass_queues_exactly_the_ready_tasks_and_a_worker_runs_them(eas, tmp_path):
    job_id = submit(eas, {"working_directory": "p", "task_list": [
        {"task": "write_text", "name": "A", "text": "alpha", "outputs": {"text": "a.txt"}},
        {"task": "null", "name": "B"},
        {"task": "concatenate", "name": "C", "inputs": {"a": "a.txt"}, "outputs": {"joined": "c.txt"}},
    ]}, tmp_path)
    before = job_tasks(eas, job_id)
    assert {name: row.state for name, row in before.items()} == {"A": "ready", "B": "ready", "C": "waiting"}

    result = eas.script("queue_management/schedule_all_waiting_tasks.py", "--once")
    assert "promoted 2" in result.stdout, result.stdout
    after = job_tasks(eas, job_id)
    assert {name: row.state for name, row in after.items()} == {"A": "queued", "B": "queued", "C": "waiting"}
    with eas.engine.connect() as connection:
        queued = connection.execute(sa.select(attempts.c.id, attempts.c.task_id, attempts.c.state, attempts.c.number)).all()
        in_queue = set(connection.execute(sa.select(sql_queue.c.attempt_id)).scalars())
    assert sorted((row.task_id, row.state, row.number) for row in queued) == [
        (after["A"].id, "queued", 1), (after["B"].id, "queued", 1)]
    assert in_queue == {row.id for row in queued}

    processes = run_workers(eas, 1)
    final = job_tasks(eas, job_id)
    assert {name: row.state for name, row in final.items()} == {"A": "done", "B": "done", "C": "done"}
    for row in final.values():
        (attempt,) = attempts_of(eas, row.id)
        assert attempt.state == "succeeded" and attempt.worker_name and str(processes[0].pid) in attempt.worker_name
    with open(os.path.join(eas.settings.data_dir, "p", "c.txt")) as handle:
        assert handle.read() == "alpha"
    with eas.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(sql_queue)).scalar() == 0


# -- task kinds ----------------------------------------------------------------------------------------

def test_null_error_and_sleep_record_states_errors_and_times(eas, tmp_path):
    job_id = submit(eas, {"task_list": [
        {"task": "null", "name": "nothing"},
        {"task": "error", "name": "broken", "message": "planned failure 42"},
        {"task": "sleep", "name": "nap", "seconds": 0.2},
    ]}, tmp_path)
    run_workers(eas, 1)
    rows = job_tasks(eas, job_id)
    assert (rows["nothing"].state, rows["broken"].state, rows["nap"].state) == ("done", "failed", "done")
    assert "planned failure 42" in rows["broken"].error_text

    (failed,) = attempts_of(eas, rows["broken"].id)
    assert failed.state == "failed" and "planned failure 42" in failed.error_text
    assert any(line.severity == "ERROR" and "planned failure 42" in line.message for line in log_of(eas, failed.id))
    for name in ("nothing", "broken", "nap"):
        (attempt,) = attempts_of(eas, rows[name].id)
        for column in ("wall_s", "cpu_s", "cpu_children_s", "started_at", "ended_at"):
            value = getattr(attempt, column)
            assert value is not None and value >= 0, (name, column, value)
        assert attempt.started_at <= attempt.ended_at and attempt.host and attempt.pid
    (nap,) = attempts_of(eas, rows["nap"].id)
    assert nap.wall_s >= 0.2
    with eas.engine.connect() as connection:
        chain_state = connection.execute(sa.select(tasks.c.state).where(tasks.c.job_id == job_id, tasks.c.parent_id.is_(None))).scalar()
    assert chain_state == "running"  # a failed child keeps the chain from finishing


SHOW_ENVIRONMENT = "; ".join([
    "echo TASK=$EAS_TASK_ID", "echo ATTEMPT=$EAS_ATTEMPT_ID", "echo CPUS=$EAS_CPUS", "echo INPUT=$EAS_INPUT_TEXT",
    "echo OUTPUT=$EAS_OUTPUT_COPY", "echo OUTPUT2=$EAS_OUTPUT_LIGHT_CURVE", "echo WORK=$EAS_WORK_DIR", "echo PWD=$(pwd)",
    "echo METADATA_IN=$(tr -d ' \\n' < \"$EAS_METADATA_IN\")", "echo METADATA_OUT=$EAS_METADATA_OUT",
    "echo DESCRIPTION=$(tr -d ' \\n' < \"$EAS_TASK_DESCRIPTION\")",
    "cp \"$EAS_INPUT_TEXT\" \"$EAS_OUTPUT_COPY\"", "echo curve > \"$EAS_OUTPUT_LIGHT_CURVE\"",
    "echo '{\"colour_seen\": \"blue\", \"n\": 3}' > \"$EAS_METADATA_OUT\"", "echo to-stderr >&2",
])


def test_shell_task_gets_the_contract_environment_and_its_output_is_logged(eas, tmp_path):
    job_id = submit(eas, {"job_name": "env", "working_directory": "envwd", "task_list": [
        {"task": "write_text", "name": "source", "text": "payload", "outputs": {"text": "in.txt"}},
        {"task": "execution_for_loop", "parameter": "colour", "values": ["blue"], "task_list": [
            {"task": "shell", "name": "show", "marker": "m-17", "inputs": {"text": "in.txt"},
             "outputs": {"copy": "copy.txt", "light-curve": "lc.txt"}, "command": SHOW_ENVIRONMENT},
        ]},
    ]}, tmp_path)
    run_workers(eas, 1)
    rows = job_tasks(eas, job_id)
    show = rows["show"]
    (attempt,) = attempts_of(eas, show.id)
    assert (show.state, attempt.state) == ("done", "succeeded"), attempt.error_text
    lines = log_of(eas, attempt.id)
    stdout = dict(line.message.split("=", 1) for line in lines if line.stream == "stdout")
    assert [line.message for line in lines if line.stream == "stderr"] == ["to-stderr"]
    data_dir = eas.settings.data_dir
    work_dir = os.path.join(data_dir, "scratch", "attempt_%d" % attempt.id)
    assert stdout["TASK"] == str(show.id) and stdout["ATTEMPT"] == str(attempt.id) and stdout["CPUS"] == "1"
    assert stdout["INPUT"] == os.path.join(data_dir, "envwd", "in.txt")
    assert stdout["WORK"] == work_dir and stdout["PWD"] == work_dir
    assert stdout["OUTPUT"].startswith(work_dir + os.sep) and stdout["OUTPUT"].endswith("copy.txt")
    assert stdout["OUTPUT2"].startswith(work_dir + os.sep) and stdout["OUTPUT2"].endswith("lc.txt")
    assert stdout["METADATA_OUT"].startswith(work_dir + os.sep)
    assert '"colour":"blue"' in stdout["METADATA_IN"] and '"colour_index":0' in stdout["METADATA_IN"]
    assert '"marker":"m-17"' in stdout["DESCRIPTION"]
    with open(os.path.join(data_dir, "envwd", "copy.txt")) as handle:
        assert handle.read() == "payload"
    assert not os.path.exists(work_dir)  # scratch is cleaned after the attempt
    with eas.engine.connect() as connection:
        metadata = {row.key: (row.value_type, json.loads(row.value)) for row in connection.execute(
            sa.select(metadata_items).where(metadata_items.c.task_id == show.id, metadata_items.c.scope == "task"))}
    assert metadata == {"colour_seen": ("str", "blue"), "n": ("int", 3)}


def test_a_python_task_finds_its_scratch_folder_and_files_however_it_first_touches_them(eas, tmp_path):
    """A ``python:`` task's folder and JSON files are made on first use; every way in finds them there, and a
    task that never touches them gets none (``--keep-scratch`` shows which folders were made)."""
    touches = ["environment", "relative", "subprocess", "ctx"]
    job_id = submit(eas, {"job_name": "pyenv", "task_list": [
        {"task": "python_environment", "name": touch, "touch": touch} for touch in touches] + [
        {"task": "null", "name": "untouched"}]}, tmp_path)
    run_workers(eas, 1, "--keep-scratch")
    rows = job_tasks(eas, job_id)
    data_dir = eas.settings.data_dir
    for touch in touches:
        (attempt,) = attempts_of(eas, rows[touch].id)
        assert (rows[touch].state, attempt.state) == ("done", "succeeded"), attempt.error_text
        messages = [line.message for line in log_of(eas, attempt.id) if line.stream == "stdout"]
        stdout = dict(message.split("=", 1) for message in messages if "=" in message)
        work_dir = os.path.join(data_dir, "scratch", "attempt_%d" % attempt.id)
        assert stdout["CWD"] == work_dir and stdout["WORK"] == work_dir, messages
        assert stdout["NAME"] == touch and stdout["METADATA_KEYS"] == "metadata,requested_metadata"
        assert stdout["NOTE"] == str(touch == "relative")
        assert messages[-1] == "last words without a newline", messages
        if touch == "subprocess":
            assert stdout["SHELL_PWD"] == work_dir and '"name": "subprocess"' in stdout["SHELL_DESCRIPTION"]
        if touch == "ctx":
            assert stdout["CTX_WORK"] == work_dir
        assert os.path.isfile(os.path.join(work_dir, "description.json"))
        with eas.engine.connect() as connection:
            seen = connection.execute(sa.select(metadata_items.c.value).where(
                metadata_items.c.task_id == rows[touch].id, metadata_items.c.key == "seen")).scalar()
        assert json.loads(seen) == touch
    (untouched,) = attempts_of(eas, rows["untouched"].id)
    assert untouched.state == "succeeded"
    assert not os.path.exists(os.path.join(data_dir, "scratch", "attempt_%d" % untouched.id))


def test_python_and_command_products_are_recorded_with_md5_and_size(eas, tmp_path):
    text = "hello products \u00e9\n"
    job_id = submit(eas, {"job_name": "products", "working_directory": "prodwd/sub", "task_list": [
        {"task": "write_text", "name": "python", "text": text, "outputs": {"text": "hello.txt"}},
        {"task": "shell_product", "name": "command", "text": "from the shell", "outputs": {"text": "shell.txt"}},
        {"task": "concatenate", "name": "join", "inputs": {"a": "hello.txt", "b": "shell.txt"},
         "outputs": {"joined": "joined.txt"}},
        {"task": "emit_metadata", "name": "meta",
         "values": {"outcome": "PASS", "depth": 12.5, "count": 3, "ok": True, "nested": {"a": [1, 2]}}},
    ]}, tmp_path)
    run_workers(eas, 1)
    rows = job_tasks(eas, job_id)
    assert {name: row.state for name, row in rows.items()} == dict.fromkeys(["python", "command", "join", "meta"], "done")
    expected = {
        "hello.txt": text.encode(),
        "shell.txt": b"from the shell",
        "joined.txt": text.encode() + b"from the shell",
    }
    with eas.engine.connect() as connection:
        versions = connection.execute(
            sa.select(products.c.relative_path, products.c.state, products.c.latest_version_id,
                      products.c.task_id.label("producer"), product_versions)
            .join(product_versions, product_versions.c.product_id == products.c.id)
            .where(products.c.task_id.in_([row.id for row in rows.values()]))).all()
        metadata = {row.key: (row.value_type, json.loads(row.value)) for row in connection.execute(
            sa.select(metadata_items).where(metadata_items.c.task_id == rows["meta"].id))}
    assert sorted(row.relative_path for row in versions) == ["prodwd/sub/hello.txt", "prodwd/sub/joined.txt",
                                                             "prodwd/sub/shell.txt"]
    for row in versions:
        content = expected[os.path.basename(row.relative_path)]
        path = os.path.join(eas.settings.data_dir, "prodwd", "sub", os.path.basename(row.relative_path))
        assert row.path == path
        assert (row.size, row.md5) == (len(content), md5(content))
        assert (row.state, row.latest_version_id, row.qc_state) == ("made", row.id, "unchecked")
        with open(path, "rb") as handle:
            assert handle.read() == content
        (attempt,) = attempts_of(eas, row.producer)
        assert row.attempt_id == attempt.id
    assert metadata == {"outcome": ("str", "PASS"), "depth": ("float", 12.5), "count": ("int", 3), "ok": ("bool", True),
                        "nested": ("json", {"a": [1, 2]})}
    (written,) = attempts_of(eas, rows["python"].id)
    assert [line.message for line in log_of(eas, written.id) if line.stream == "stdout"] == ["wrote %d characters" % len(text)]


def test_requested_metadata_reaches_later_siblings(eas, tmp_path):
    job_id = submit(eas, {"task_list": [
        {"task": "emit_metadata", "name": "detect", "values": {"outcome": "PASS", "snr": 7.5}},
        {"task": "emit_metadata", "name": "other", "values": {"flag": True}},
        {"task": "emit_metadata", "name": "verdict", "requires_metadata_from": ["detect", "other"],
         "values": {"seen": "(requested_metadata['detect']['outcome'])", "both": "(requested_metadata['other']['flag'])"}},
        {"task": "shell", "name": "show", "requires_metadata_from": ["detect"],
         "command": "tr -d ' \\n' < \"$EAS_METADATA_IN\"; echo"},
    ]}, tmp_path)
    run_workers(eas, 1)
    rows = job_tasks(eas, job_id)
    assert {row.state for row in rows.values()} == {"done"}
    with eas.engine.connect() as connection:
        verdict = {row.key: json.loads(row.value) for row in connection.execute(
            sa.select(metadata_items).where(metadata_items.c.task_id == rows["verdict"].id))}
    assert verdict == {"seen": "PASS", "both": True}
    (attempt,) = attempts_of(eas, rows["show"].id)
    (line,) = [line.message for line in log_of(eas, attempt.id) if line.stream == "stdout"]
    assert json.loads(line) == {"metadata": {}, "requested_metadata": {"detect": {"outcome": "PASS", "snr": 7.5}}}


def test_submission_reading_a_product_whose_producer_is_finishing_is_not_left_waiting(eas, tmp_path):
    """A later job reads a file of an earlier job while that file's producer is committing its completion.

    The completion is held open here (as a worker's transaction would be); the submission must either
    wait for it and see the producer done, or write its dependency where the completion will release it.
    """
    from eas_controller.store import tasks as task_store
    from eas_controller.chains import read_chain_file
    from eas_controller.submission import submit_chain

    first = submit(eas, {"working_directory": "shared", "task_list": [
        {"task": "write_text", "name": "maker", "text": "x", "outputs": {"text": "made.txt"}}]}, tmp_path, "first.json")
    maker = job_tasks(eas, first)["maker"]
    chain, source = read_chain_file(write_chain(tmp_path, {"working_directory": "shared", "task_list": [
        {"task": "concatenate", "name": "reader", "inputs": {"a": "made.txt"}, "outputs": {"joined": "read.txt"}}]},
        "second.json"))
    submitted = {}

    def submit_second():
        submitted["job"] = submit_chain(eas.engine, chain, source)[0]

    with eas.engine.connect() as connection:
        if eas.backend == "sqlite":
            connection = connection.execution_options(sqlite_begin="IMMEDIATE")
        with connection.begin():  # the producer's completion, as a worker writes it: product first, then task
            connection.execute(products.update().where(products.c.task_id == maker.id).values(state="made"))
            task_store.finish_done(connection, [maker.id], time.time())
            thread = threading.Thread(target=submit_second)
            thread.start()
            thread.join(2)  # a submission that does not wait for the producer's row finishes here
        thread.join(60)
    assert not thread.is_alive() and "job" in submitted
    assert job_tasks(eas, submitted["job"])["reader"].state == "ready"


# -- dependency order ---------------------------------------------------------------------------------------

def test_diamond_runs_in_dependency_order_on_two_workers(eas, tmp_path):
    order_log = str(tmp_path / "order.log")
    job_id = submit(eas, {"working_directory": "diamond", "task_list": [
        {"task": "record_order", "name": "A", "order_log": order_log, "outputs": {"a": "a.txt"}},
        {"task": "record_order", "name": "B", "order_log": order_log, "seconds": 0.2, "inputs": {"a": "a.txt"},
         "outputs": {"b": "b.txt"}},
        {"task": "record_order", "name": "C", "order_log": order_log, "seconds": 0.2, "inputs": {"a": "a.txt"},
         "outputs": {"c": "c.txt"}},
        {"task": "record_order", "name": "D", "order_log": order_log, "inputs": {"b": "b.txt", "c": "c.txt"}},
    ]}, tmp_path)
    run_workers(eas, 2, "--concurrency", "1", "--cpus", "1")
    with open(order_log) as handle:
        names = [line.split()[0] for line in handle]
    assert names[0] == "A" and sorted(names[1:3]) == ["B", "C"] and names[3] == "D", names
    rows = job_tasks(eas, job_id)
    assert {row.state for row in rows.values()} == {"done"}
    timing = {name: attempts_of(eas, row.id)[0] for name, row in rows.items()}
    assert timing["B"].started_at >= timing["A"].ended_at and timing["C"].started_at >= timing["A"].ended_at
    assert timing["D"].started_at >= max(timing["B"].ended_at, timing["C"].ended_at)


# -- display_job_tree.py contract ----------------------------------------------------------------------------

CONTRACT = {"task_id": int, "parent_id": (int, type(None)), "job_name": str, "task_name": (str, type(None)),
            "task_type": str, "state": str, "attempts": int, "metadata": dict}


def test_display_job_tree_json_and_csv_contract(eas, tmp_path):
    first = submit(eas, {"job_name": "first", "task_list": [
        {"task": "emit_metadata", "name": "meta", "values": {"outcome": "PASS", "depth": 1.5}},
        {"task": "execution_for_loop", "parameter": "x", "values": [1, 2], "task_list": [{"task": "null", "name": "n"}]},
    ]}, tmp_path, "first.json")
    submit(eas, {"job_name": "second", "task_list": [{"task": "null", "name": "other"}]}, tmp_path, "second.json")
    run_workers(eas, 1)

    everything = json.loads(eas.script("diagnostics/display_job_tree.py", "--format", "json").stdout)
    assert isinstance(everything, list) and len(everything) == 5 + 2
    for row in everything:
        for key, kind in CONTRACT.items():
            assert isinstance(row[key], kind), (key, row)
    ids = {row["task_id"] for row in everything}
    assert all(row["parent_id"] is None or row["parent_id"] in ids for row in everything)

    selected = json.loads(eas.script("diagnostics/display_job_tree.py", "--format", "json", "--job-name", "first").stdout)
    assert {row["job_name"] for row in selected} == {"first"} and len(selected) == 5
    assert all(row["job_id"] == first for row in selected)
    by_name = {row["task_name"]: row for row in selected if row["task_name"]}
    assert by_name["meta"]["metadata"] == {"outcome": "PASS", "depth": 1.5}
    assert by_name["meta"]["attempts"] == 1 and by_name["meta"]["state"] == "done"
    assert [row["state"] for row in selected] == ["done"] * 5
    assert {row["task_type"] for row in selected} == {"execution_chain", "emit_metadata", "execution_for_loop", "null"}
    assert json.loads(eas.script("diagnostics/display_job_tree.py", "--format", "json", "--job-name", "nope").stdout) == []

    table = list(csv.DictReader(io.StringIO(
        eas.script("diagnostics/display_job_tree.py", "--format", "csv", "--job-name", "first").stdout)))
    assert [int(row["task_id"]) for row in table] == [row["task_id"] for row in selected]
    assert set(CONTRACT) <= set(table[0])
    meta_row = [row for row in table if row["task_name"] == "meta"][0]
    assert json.loads(meta_row["metadata"]) == {"outcome": "PASS", "depth": 1.5} and meta_row["attempts"] == "1"

    people = eas.script("diagnostics/display_job_tree.py", "--job-name", "second").stdout
    assert "other" in people and "done" in people and "emit_metadata" not in people


# -- recording a group of results --------------------------------------------------------------------------

def test_a_group_of_results_is_fenced_attempt_by_attempt(eas, tmp_path):
    """Results recorded together in one transaction: one whose attempt was taken away meanwhile is discarded,
    the others are recorded, and each of their tasks is done."""
    import time

    from eas_controller.database.engine import run_transaction
    from eas_controller.database.schema import workers
    from eas_controller.worker import completion
    from eas_controller.worker.execution import Outcome, PreparedAttempt

    eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, {"task_list": [
        {"task": "emit_metadata", "name": "t%d" % i, "values": {"i": i}} for i in range(3)]}))
    queue = make_queue(eas.settings, eas.engine)
    Scheduler(eas.engine, queue).run_pass()
    with eas.engine.begin() as connection:
        worker_id = connection.execute(workers.insert().values(
            name="group", host="here", pid=1, capabilities="[]", cpus=1, gpus=0, memory_gb=1, concurrency=1,
            free_slots=1, state="running", started_at=time.time(), last_seen=time.time())).inserted_primary_key[0]
    worker = dict(id=worker_id, name="group", host="here", pid=1)
    claims = queue.claim(worker, None, 10, 60.0)
    assert len(claims) == 3
    taken = claims[1]["attempt_id"]
    with eas.engine.begin() as connection:  # as the scheduler does when a lease expires
        connection.execute(attempts.update().where(attempts.c.id == taken).values(state="stalled"))
    items = [completion.Completion(
        PreparedAttempt(claim=claim, task_type=None, work_dir="", environment={}, inputs={}, outputs={},
                        final_outputs={}, description_path="", metadata_in_path="", metadata_out_path="",
                        description=claim["description"]),
        Outcome(succeeded=True, exit_status=0, wall_s=0.01, metadata={"i": index}), {}, started_at=time.time())
        for index, claim in enumerate(claims)]
    results = run_transaction(eas.engine, lambda connection: completion.record_outcomes(
        connection, worker, items, RetryPolicy(1, 5.0), queue if queue.in_database else None))
    assert results == ["succeeded", "lost", "succeeded"]
    with eas.engine.connect() as connection:
        states = dict(connection.execute(sa.select(attempts.c.id, attempts.c.state)).all())
        task_states = dict(connection.execute(sa.select(tasks.c.name, tasks.c.state)).all())
        stored = connection.execute(sa.select(metadata_items.c.task_id, metadata_items.c.value)).all()
    assert [states[claim["attempt_id"]] for claim in claims] == ["succeeded", "stalled", "succeeded"]
    assert (task_states["t0"], task_states["t1"], task_states["t2"]) == ("done", "running", "done")
    assert sorted(value for _task, value in stored) == ["0", "2"]  # nothing of the discarded result
