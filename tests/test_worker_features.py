"""Worker features with real worker processes and a real scheduler daemon: leases renewed by the heartbeat,
timeouts that kill whole process trees, resource-aware claiming, QC, product versions, streamed logs,
retries with backoff, niceness. Database-dependent behaviour runs on SQLite and MariaDB."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from fault_helpers import Cluster, cluster_factory, process_gone, wait_for  # noqa: F401 (fixture)

SQL_QUEUE_BACKENDS = ["sqlite", "mysql"]


def md5(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.md5(handle.read()).hexdigest()


# -- leases and the worker row ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_heartbeat_renews_the_lease_while_the_task_keeps_a_core_busy(cluster_factory, backend):
    cluster = cluster_factory(backend, lease_seconds=1.5)
    cluster.submit([{"task": "fault_busy", "name": "busy", "seconds": 5}])
    cluster.scheduler()
    worker = cluster.worker("--concurrency", "1", "--cpus", "1", name="busy-worker")
    wait_for(lambda: cluster.task("busy").state == "running", 30, "the busy task to start")
    row = wait_for(lambda: (cluster.rows("SELECT * FROM eas_workers WHERE name = 'busy-worker'") or [None])[0], 10,
                   "the worker row")
    assert row.host == socket.gethostname() and row.pid == worker.pid
    assert "fault_busy" in row.capabilities and row.cpus == 1 and row.concurrency == 1
    wait_for(lambda: cluster.value("SELECT free_slots FROM eas_workers WHERE id = :id", id=row.id) == 0, 10,
             "the heartbeat to report the slot taken")
    wait_for(lambda: cluster.task("busy").state == "done", 60, "the busy task to finish")
    attempts = cluster.attempts_of("busy")
    assert [attempt.state for attempt in attempts] == ["succeeded"], attempts
    # renewed many times while the core was busy: the last lease ends well after the first one would have
    assert attempts[0].lease_expires_at > attempts[0].started_at + 3
    assert cluster.value("SELECT last_seen FROM eas_workers WHERE id = :id", id=row.id) > attempts[0].started_at + 3


# -- timeouts -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task_type", ["fault_timeout_python", "fault_timeout_command"])
def test_timeout_kills_the_task_and_every_process_it_started(cluster_factory, tmp_path, task_type):
    cluster = cluster_factory("sqlite")
    pid_file = tmp_path / "pids"
    cluster.submit([{"task": task_type, "name": "hang", "pid_file": str(pid_file)}])
    cluster.scheduler()
    cluster.worker("--concurrency", "1")
    wait_for(lambda: cluster.task("hang").state == "failed", 60, "the task to time out")
    attempt = cluster.attempts_of("hang")[0]
    assert attempt.state == "failed" and attempt.error_text == "timed out after 1.5 s"
    pids = [int(line) for line in pid_file.read_text().split()]
    assert len(pids) == 3  # two sleeps (one in its own session) and the task's own process
    wait_for(lambda: all(process_gone(pid) for pid in pids), 10, "every process of the task to be gone")
    messages = [line.message for line in cluster.log_lines(attempt.id) if line.stream == "worker"]
    assert any("timed out after 1.5 s: the task's process group was killed" in message for message in messages)


# -- resources ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_a_two_cpu_worker_never_runs_two_two_cpu_tasks_at_once(cluster_factory, tmp_path, backend):
    cluster = cluster_factory(backend)
    two, one = tmp_path / "two_cpu_journal", tmp_path / "one_cpu_journal"
    cluster.submit([{"task": "fault_two_cpus", "name": "two%d" % i, "seconds": 0.4, "journal": str(two)} for i in range(4)]
                   + [{"task": "fault_one_cpu", "name": "one%d" % i, "seconds": 0.8, "journal": str(one)} for i in range(2)])
    cluster.scheduler()
    cluster.worker("--cpus", "2", "--concurrency", "2")
    wait_for(cluster.worker_tasks_finished, 60, "every task to finish")
    assert cluster.value("SELECT COUNT(*) FROM eas_tasks WHERE state = 'done' AND is_control = :no", no=False) == 6
    wide = sorted(tuple(float(x) for x in line.split()[:2]) for line in two.read_text().splitlines())
    narrow = sorted(tuple(float(x) for x in line.split()[:2]) for line in one.read_text().splitlines())
    assert len(wide) == 4 and len(narrow) == 2
    for (_start, end), (next_start, _end) in zip(wide, wide[1:]):
        assert next_start >= end, "two 2-cpu tasks overlapped: %s" % wide
    for start, end in wide:  # a 2-cpu task takes the whole worker: no 1-cpu task beside it either
        assert all(other_end <= start or other_start >= end for other_start, other_end in narrow), (wide, narrow)
    # the worker does run two tasks at once when they fit: the two 1-cpu tasks overlapped
    assert narrow[1][0] < narrow[0][1], narrow
    assert {line.split()[2] for line in two.read_text().splitlines()} == {"2"}  # EAS_CPUS
    assert {line.split()[2] for line in one.read_text().splitlines()} == {"1"}


def test_a_gpu_task_waits_for_a_worker_with_a_gpu_and_is_reported(cluster_factory):
    cluster = cluster_factory("sqlite")
    cluster.submit([{"task": "fault_gpu", "name": "gpu"}, {"task": "null", "name": "cpu"}])
    cluster.schedule_once()
    cpu_worker = cluster.worker("--gpus", "0", "--cpus", "1", name="cpu-only")
    wait_for(lambda: cluster.task("cpu").state == "done", 30, "the cpu task")
    assert cluster.task("gpu").state == "queued" and not cluster.attempts_of("gpu")[0].worker_id
    assert "task type fault_gpu needs more than this worker offers (gpu 1 > 0): not claimed here" in cluster.log(cpu_worker)
    status = cluster.schedule_once("--verbose")
    assert "1 queued task needs resources no live worker offers: gpu (fault_gpu)" in status, status
    cluster.worker("--gpus", "1", "--cpus", "1", name="gpu-node")
    wait_for(lambda: cluster.task("gpu").state == "done", 30, "the gpu task")
    attempt = cluster.attempts_of("gpu")[0]
    assert attempt.worker_name == "gpu-node"
    metadata = {row.key: row.value for row in cluster.rows("SELECT * FROM eas_metadata WHERE task_id = :id",
                                                           id=attempt.task_id)}
    assert metadata == {"eas_gpus": '"1"', "cuda_visible_devices": '"0"'}
    assert "no live worker offers" not in cluster.schedule_once("--verbose")


# -- QC and product versions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_a_product_failing_qc_holds_back_its_dependants_until_a_rerun_passes(cluster_factory, tmp_path, backend):
    cluster = cluster_factory(backend, retry_backoff_s=0.1)
    flag = tmp_path / "fixed"
    cluster.submit([
        {"task": "fault_qc_text", "name": "make", "outputs": {"text": "made.txt"}, "text": "bad data",
         "fixed_text": "good data", "fix_flag": str(flag)},
        {"task": "concatenate", "name": "use", "inputs": {"a": "made.txt"}, "outputs": {"joined": "used.txt"}},
    ])
    cluster.scheduler()
    cluster.worker("--concurrency", "1")
    wait_for(lambda: cluster.task("make").state == "failed", 60, "the producer to fail QC")
    first = cluster.attempts_of("make")[0]
    assert first.state == "failed" and "failed QC" in first.error_text and "the product says 'bad data'" in first.error_text
    product = cluster.rows("SELECT * FROM eas_products WHERE relative_path = 'faults/made.txt'")[0]
    version = cluster.rows("SELECT * FROM eas_product_versions WHERE product_id = :id", id=product.id)[0]
    assert product.state == "failed_qc" and version.qc_state == "failed" and version.attempt_id == first.id
    assert version.path == cluster.product_path("failed_qc/attempt_%d/faults/made.txt" % first.id)
    with open(version.path) as handle:
        assert handle.read() == "bad data"  # kept for inspection...
    assert not os.path.exists(cluster.product_path("faults/made.txt"))  # ...but not where readers look
    assert cluster.task("use").state == "waiting" and not cluster.attempts_of("use")

    flag.touch()
    cluster.environment.script("queue_management/reschedule_all_unfinished_jobs.py")
    wait_for(lambda: cluster.task("use").state == "done", 60, "the dependant to run on the passing product")
    versions = cluster.rows("SELECT * FROM eas_product_versions WHERE product_id = :id ORDER BY id", id=product.id)
    assert [v.qc_state for v in versions] == ["failed", "passed"]
    assert cluster.rows("SELECT state FROM eas_products WHERE id = :id", id=product.id)[0].state == "made"
    with open(cluster.product_path("faults/used.txt")) as handle:
        assert handle.read() == "good data"


@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_a_rerun_adds_a_product_version_and_the_file_on_disk_is_the_newest(cluster_factory, backend):
    cluster = cluster_factory(backend)
    cluster.submit([{"task": "fault_sleep_write", "name": "writer", "outputs": {"text": "out.txt"}}])
    cluster.scheduler()
    cluster.worker("--concurrency", "1")
    wait_for(lambda: cluster.task("writer").state == "done", 30, "the first run")
    with cluster.engine.begin() as connection:  # what a rerun does: the finished task is made ready again
        connection.exec_driver_sql("UPDATE eas_tasks SET state = 'ready' WHERE name = 'writer'")
    wait_for(lambda: len(cluster.attempts_of("writer")) == 2 and cluster.task("writer").state == "done", 30, "the rerun")
    first, second = cluster.attempts_of("writer")
    path = cluster.product_path("faults/out.txt")
    versions = cluster.rows("SELECT v.* FROM eas_product_versions v JOIN eas_products p ON p.id = v.product_id "
                            "WHERE p.relative_path = 'faults/out.txt' ORDER BY v.id")
    assert [v.attempt_id for v in versions] == [first.id, second.id]
    with open(path) as handle:
        assert handle.read() == "made by attempt %d\n" % second.id
    assert versions[1].md5 == md5(path) and versions[1].size == os.path.getsize(path)
    assert versions[0].md5 == hashlib.md5(b"made by attempt %d\n" % first.id).hexdigest() != versions[1].md5
    assert sorted(os.listdir(os.path.dirname(path))) == ["out.txt"]  # no partial or backup files left


def test_publication_undo_puts_back_the_previous_file_unless_a_newer_one_replaced_it(tmp_path):
    from eas_controller.products import Publication

    final = tmp_path / "products" / "x.txt"
    final.parent.mkdir()
    final.write_text("old")
    staged = tmp_path / "staged"
    staged.write_text("late")
    publication = Publication()
    publication.publish(str(staged), str(final))
    assert final.read_text() == "late"
    assert publication.undo() == 1 and final.read_text() == "old"
    assert sorted(os.listdir(final.parent)) == ["x.txt"]

    staged.write_text("late")
    publication = Publication()
    publication.publish(str(staged), str(final))
    final.unlink()
    final.write_text("newer, from the attempt that took over")
    assert publication.undo() == 0 and final.read_text() == "newer, from the attempt that took over"
    assert sorted(os.listdir(final.parent)) == ["x.txt"]

    staged.write_text("kept")
    publication = Publication()
    publication.publish(str(staged), str(final))
    publication.commit()
    assert final.read_text() == "kept" and sorted(os.listdir(final.parent)) == ["x.txt"]


# -- logs -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_output_lines_keep_their_own_times_and_a_traceback_is_stored_whole(cluster_factory, backend):
    cluster = cluster_factory(backend)
    cluster.submit([
        {"task": "fault_chatty", "name": "chat", "lines": 2, "pause": 0.5},
        {"task": "fault_chatty", "name": "crash", "lines": 1, "crash": True},
        {"task": "fault_chatty_command", "name": "command", "pause": 0.5, "exit_status": 3},
    ])
    cluster.scheduler()
    cluster.worker("--concurrency", "2")
    wait_for(cluster.worker_tasks_finished, 60, "the three tasks")

    lines = {(line.stream, line.message): line for line in cluster.log_lines(cluster.attempts_of("chat")[0].id)}
    assert lines[("stdout", "out line 0")].severity == "INFO"
    assert lines[("stderr", "err line 0")].severity == "WARNING"
    assert lines[("task", "a line from ctx.log")].severity == "WARNING"
    assert lines[("stdout", "out line 1")].created_at - lines[("stdout", "out line 0")].created_at >= 0.4

    crash = cluster.attempts_of("crash")[0]
    errors = [line.message for line in cluster.log_lines(crash.id) if line.severity == "ERROR"]
    traceback_text = [message for message in errors if message.startswith("Traceback (most recent call last)")]
    assert len(traceback_text) == 1 and traceback_text[0].count("_deep_failure") >= 4
    assert traceback_text[0].rstrip().endswith("ValueError: the innermost frame failed on purpose")
    assert crash.error_text == traceback_text[0]
    assert cluster.task("crash").error_text.startswith("ValueError: the innermost frame failed on purpose")

    command = cluster.attempts_of("command")[0]
    lines = {(line.stream, line.message): line for line in cluster.log_lines(command.id)}
    assert ("stderr", "first-err") in lines
    assert lines[("stdout", "second-out")].created_at - lines[("stdout", "first-out")].created_at >= 0.4
    assert lines[("worker", "command exited with status 3")].severity == "ERROR"
    assert command.exit_status == 3 and cluster.task("command").state == "failed"


def test_the_log_of_a_running_task_can_be_read_before_it_ends(cluster_factory):
    cluster = cluster_factory("sqlite", lease_seconds=1.5)
    cluster.submit([{"task": "fault_chatty", "name": "slow", "lines": 2, "pause": 8}])
    cluster.scheduler()
    cluster.worker("--concurrency", "1")
    attempt_id = wait_for(lambda: cluster.value("SELECT a.id FROM eas_attempts a JOIN eas_tasks t ON t.id = a.task_id "
                                                "WHERE t.name = 'slow' AND a.state = 'running'"), 30, "the task to start")
    wait_for(lambda: any(line.message == "out line 0" for line in cluster.log_lines(attempt_id)), 10,
             "the first line to reach the database")
    assert cluster.value("SELECT state FROM eas_attempts WHERE id = :id", id=attempt_id) == "running"


# -- retries --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_failed_attempts_retry_with_exponential_backoff_then_the_task_fails_with_its_history(cluster_factory, backend):
    cluster = cluster_factory(backend, max_attempts=3, retry_backoff_s=0.3)
    cluster.submit([{"task": "error", "name": "doomed", "message": "planned failure"},
                    {"task": "fault_fail_twice_max", "name": "typed", "message": "fails too"}])
    cluster.scheduler(interval=0.1)
    cluster.worker("--concurrency", "1")
    wait_for(cluster.worker_tasks_finished, 60, "both tasks to run out of attempts")
    doomed = cluster.attempts_of("doomed")
    assert [a.state for a in doomed] == ["failed"] * 3 and all(a.error_text == "planned failure" for a in doomed)
    assert [a.number for a in doomed] == [1, 2, 3]
    assert doomed[1].started_at - doomed[0].ended_at >= 0.3
    assert doomed[2].started_at - doomed[1].ended_at >= 0.6
    assert cluster.task("doomed").state == "failed"
    assert cluster.task("doomed").error_text == "planned failure (attempt 3 of 3)"
    notes = [line.message for line in cluster.log_lines(doomed[0].id) if line.stream == "system"]
    assert notes == ["the task will be retried in 0.3 s (1 of 3 attempts used)"]
    notes = [line.message for line in cluster.log_lines(doomed[2].id) if line.stream == "system"]
    assert notes == ["no attempts left (3 of 3 used): the task failed"]
    assert len(cluster.attempts_of("typed")) == 2  # the type's max_attempts wins over the setting
    assert cluster.task("typed").error_text == "fails too (attempt 2 of 2)"


# -- niceness -------------------------------------------------------------------------------------------------

def test_nice_lowers_the_priority_of_python_and_command_tasks(cluster_factory):
    cluster = cluster_factory("sqlite")
    cluster.submit([{"task": "fault_niceness", "name": "python"},
                    {"task": "fault_niceness_command", "name": "command", "outputs": {"text": "nice.txt"}}])
    cluster.scheduler()
    cluster.worker("--nice", "7", "--concurrency", "1")
    wait_for(cluster.worker_tasks_finished, 60, "both tasks")
    expected = min(19, os.nice(0) + 7)
    metadata = {row.key: row.value for row in cluster.rows("SELECT * FROM eas_metadata WHERE task_id = :id",
                                                           id=cluster.task("python").id)}
    assert metadata == {"nice": str(expected)}
    with open(cluster.product_path("faults/nice.txt")) as handle:
        assert int(handle.read()) == expected


# -- short tasks: claimed ahead, recorded in groups, chains without a scheduler pass -----------------------

def closing_counts(log: str) -> dict:
    """The counts of a worker's closing line: '... N attempt(s) claimed in C claim(s), R result(s) recorded in T'."""
    import re

    found = re.search(r"(\d+) attempt\(s\) claimed in (\d+) claim\(s\), (\d+) result\(s\) recorded in (\d+) "
                      r"transaction\(s\)", log)
    assert found, log[-2000:]
    return dict(zip(("claimed", "claims", "recorded", "recordings"), map(int, found.groups())))


@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_short_tasks_are_claimed_ahead_in_batches_and_each_runs_once(cluster_factory, backend):
    cluster = cluster_factory(backend)
    cluster.submit([{"task": "null", "name": "n%d" % i} for i in range(300)])
    cluster.schedule_once()
    worker = cluster.worker("--concurrency", "1")
    wait_for(cluster.worker_tasks_finished, 120, "300 short tasks to finish")
    assert cluster.stop(worker) == 0
    counts = closing_counts(cluster.log(worker))
    assert counts["claimed"] == counts["recorded"] == 300
    assert counts["claims"] <= 150, counts  # one slot, yet several attempts per claim once the type is known short
    per_task = cluster.rows("SELECT task_id, COUNT(*) AS n, MIN(state) AS state FROM eas_attempts GROUP BY task_id")
    assert len(per_task) == 300 and {(row.n, row.state) for row in per_task} == {(1, "succeeded")}
    # a prefetched attempt's started_at is when its slot started it, not when it was claimed
    rows = cluster.rows("SELECT started_at, ended_at, wall_s FROM eas_attempts")
    assert all(row.started_at <= row.ended_at and row.ended_at - row.started_at < 5 for row in rows)


@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_short_python_tasks_run_in_batches_each_its_own_attempt_with_its_own_output(cluster_factory, backend):
    cluster = cluster_factory(backend)
    cluster.submit([{"task": "fault_chatty", "name": "c%d" % i, "lines": 1, "pause": 0} for i in range(200)])
    cluster.schedule_once()
    worker = cluster.worker("--concurrency", "1")
    wait_for(cluster.worker_tasks_finished, 120, "200 short tasks to finish")
    assert cluster.stop(worker) == 0
    import re

    batched, batches = map(int, re.search(r"(\d+) attempt\(s\) run in (\d+) batch\(es\)", cluster.log(worker)).groups())
    assert batched >= 100 and batches < batched, (batched, batches)  # once the type is known short
    attempts = cluster.rows("SELECT id, task_id, state, started_at, wall_s FROM eas_attempts ORDER BY started_at")
    assert len(attempts) == 200 and {row.state for row in attempts} == {"succeeded"}
    assert len({row.task_id for row in attempts}) == 200
    # one slot: each attempt started once the one before it had run, and has its own lines, and only its own
    for before, after in zip(attempts, attempts[1:]):
        assert before.started_at + before.wall_s <= after.started_at + 1e-3, (before, after)
    for row in attempts:
        messages = [line.message for line in cluster.log_lines(row.id) if line.stream in ("stdout", "stderr")]
        assert sorted(messages) == ["err line 0", "out line 0"], (row.id, messages)


@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_long_tasks_are_never_claimed_ahead(cluster_factory, backend):
    cluster = cluster_factory(backend)
    cluster.submit([{"task": "sleep", "name": "s%d" % i, "seconds": 1.5} for i in range(3)])
    cluster.schedule_once()
    cluster.worker("--concurrency", "1", "--cpus", "1", "--prefetch", "50")
    wait_for(lambda: cluster.task("s1").state == "running", 60, "the second task to start")
    # the first took 1.5 s, far over the 0.25 s under which a type is claimed ahead: the third stays queued
    assert cluster.attempts_of("s2")[0].state == "queued"
    assert cluster.task("s0").state == "done"
    wait_for(cluster.worker_tasks_finished, 60, "the tasks to finish")


@pytest.mark.parametrize("backend", SQL_QUEUE_BACKENDS)
def test_a_chain_runs_link_after_link_without_another_scheduler_pass(cluster_factory, backend):
    cluster = cluster_factory(backend)
    cluster.submit([
        {"task": "write_text", "name": "first", "text": "a", "outputs": {"text": "a.txt"}},
        {"task": "concatenate", "name": "second", "inputs": {"a": "a.txt"}, "outputs": {"joined": "b.txt"}},
        {"task": "concatenate", "name": "third", "inputs": {"a": "b.txt"}, "outputs": {"joined": "c.txt"}},
    ])
    assert "promoted 1" in cluster.schedule_once()  # only the first link is ready; no scheduler runs after this
    cluster.worker("--concurrency", "1")
    wait_for(lambda: cluster.task("third").state == "done", 60, "the last link to finish")
    with open(cluster.product_path("faults/c.txt")) as handle:
        assert handle.read() == "a"
    # each completion queued the next link itself: its attempt was queued when the previous one ended
    first, second, third = (cluster.attempts_of(name)[0] for name in ("first", "second", "third"))
    assert second.queued_at == first.ended_at and third.queued_at == second.ended_at
    # the chain that holds them is counted down by the scheduler, which has not run since
    chain = cluster.rows("SELECT * FROM eas_tasks WHERE is_control = :yes AND parent_id IS NULL", yes=True)[0]
    assert chain.state == "running"
    assert cluster.value("SELECT SUM(delivered) FROM eas_control_progress WHERE task_id = :id", id=chain.id) == 3
    cluster.schedule_once()
    assert cluster.rows("SELECT state FROM eas_tasks WHERE id = :id", id=chain.id)[0].state == "done"
    assert cluster.value("SELECT COUNT(*) FROM eas_control_progress") == 0


def test_the_child_puts_the_environment_back_after_each_task(monkeypatch):
    """A reused child must not leak one task's environment (its EAS_* variables, or what the task set or
    removed itself) into the next task's."""
    import os as os_module

    from eas_controller.worker.child import _restore_environment

    monkeypatch.setenv("EAS_KEPT", "before")
    monkeypatch.setenv("EAS_REMOVED_BY_TASK", "before")
    saved = dict(os_module.environ)
    os_module.environ.update({"EAS_TASK_ID": "7", "EAS_KEPT": "changed"})
    del os_module.environ["EAS_REMOVED_BY_TASK"]
    _restore_environment(saved)
    assert dict(os_module.environ) == saved
    assert "EAS_TASK_ID" not in os_module.environ and os_module.environ["EAS_REMOVED_BY_TASK"] == "before"
