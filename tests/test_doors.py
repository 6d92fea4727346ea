"""The doors users arrive by, with real worker processes: launch.py, the Python API and its Executor."""

import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa
from conftest import PROJECT_ROOT

from eas_controller import api
from eas_controller.database.schema import attempts, log_lines, tasks

TESTS = os.path.dirname(os.path.abspath(__file__))


def start_workers(environment, count, *args):
    """Real worker processes that can import this folder's modules (the Executor's functions)."""
    env = dict(environment.env, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    processes = []
    for number in range(count):
        log = open(os.path.join(str(environment.tmp_path), "worker-%d.log" % number), "w")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "eas_controller",
                    "worker",
                    "--concurrency",
                    "1",
                    "--cpus",
                    "2",
                    "--poll-interval",
                    "0.1",
                    "--name",
                    "door-%d" % number,
                    *args,
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
    return processes


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def workers(eas_sqlite):
    processes = start_workers(eas_sqlite, 2)
    yield eas_sqlite
    stop(processes)


@pytest.fixture
def workers_on_each_database(eas):
    """Two real workers on SQLite, MariaDB and PostgreSQL in turn."""
    processes = start_workers(eas, 2)
    yield eas
    stop(processes)


def test_launch_wait_returns_the_exit_status_and_logs_the_output(workers_on_each_database):
    workers = workers_on_each_database
    result = workers.script(
        "job_submission/launch.py",
        "-b",
        "night",
        "-n",
        "fails",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo to-stdout cpus=$EAS_CPUS; echo to-stderr >&2; exit 7",
        check=False,
    )
    assert result.returncode == 7, result.stdout + result.stderr
    task_id = int(result.stdout.splitlines()[0])
    assert "to-stdout cpus=1" in result.stdout and "to-stderr" in result.stderr
    with workers.engine.connect() as connection:
        logged = {
            (row.stream, row.message)
            for row in connection.execute(
                sa.select(log_lines.c.stream, log_lines.c.message)
                .join(attempts, attempts.c.id == log_lines.c.attempt_id)
                .where(attempts.c.task_id == task_id)
            )
        }
        exit_status = connection.execute(
            sa.select(attempts.c.exit_status).where(attempts.c.task_id == task_id)
        ).scalar()
    assert ("stdout", "to-stdout cpus=1") in logged and ("stderr", "to-stderr") in logged
    assert exit_status == 7
    # a second launch into the same batch joins the same job
    workers.script("job_submission/launch.py", "-b", "night", "--wait", "--", "true")
    with workers.engine.connect() as connection:
        jobs_of = connection.execute(sa.select(sa.distinct(tasks.c.job_id)).where(tasks.c.job_name == "night")).all()
    assert len(jobs_of) == 1


def test_launch_resources_reach_the_command(eas_sqlite):
    # the first launch with these resources registers their shell type; a worker started now serves it
    # (running workers re-read the registry every minute)
    first = eas_sqlite.script("job_submission/launch.py", "--cpus", "2", "--memory-gb", "0.25", "--", "true")
    processes = start_workers(eas_sqlite, 1)
    try:
        second = eas_sqlite.script(
            "job_submission/launch.py",
            "--cpus",
            "2",
            "--memory-gb",
            "0.25",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo cpus=$EAS_CPUS memory=$EAS_MEMORY_GB gpus=$EAS_GPUS",
        )
    finally:
        stop(processes)
    assert "cpus=2 memory=0.25 gpus=0" in second.stdout
    with eas_sqlite.engine.connect() as connection:
        types = (
            connection.execute(
                sa.select(tasks.c.task_type).where(
                    tasks.c.id.in_([int(first.stdout.split()[0]), int(second.stdout.split()[0])])
                )
            )
            .scalars()
            .all()
        )
    assert types == ["shell_cpu2_gpu0_mem0p25"] * 2


def test_launch_commands_from_stdin_are_one_batch(workers):
    result = workers.script(
        "job_submission/launch.py",
        "-b",
        "many",
        "--commands",
        "-",
        "--wait",
        input="echo one\n\n# a comment\necho two\nexit 4\n",
        check=False,
    )
    ids = [int(line) for line in result.stdout.splitlines()[:3]]
    assert result.returncode == 4 and len(ids) == 3
    assert "one" in result.stdout and "two" in result.stdout
    with workers.engine.connect() as connection:
        rows = connection.execute(
            sa.select(tasks.c.id, tasks.c.job_id, tasks.c.state).where(tasks.c.id.in_(ids)).order_by(tasks.c.id)
        ).all()
    assert len({row.job_id for row in rows}) == 1
    assert [row.state for row in rows] == ["done", "done", "failed"]


def test_launch_refuses_bad_input_with_one_line(eas_sqlite):
    for args, message in (
        (["--"], "no command given"),
        (["-i", "=x", "--", "true"], "-i '=x'"),
        (["--cpus", "0", "--", "true"], "--cpus must be positive"),
    ):
        result = eas_sqlite.script("job_submission/launch.py", *args, check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_submit_wait_status_results(workers):
    job = api.submit(
        {
            "job_name": "from_python",
            "task_list": [
                {"task": "shell", "name": "hello", "command": "echo hi"},
                {"task": "error", "name": "broken", "message": "planned"},
            ],
        },
        settings=workers.settings,
    )
    status = job.wait(timeout=120)
    print(status)
    assert status.finished and status.state == "failed" and status.counts.get("done") == 1
    by_name = {result.name: result for result in job.results()}
    assert by_name["hello"].state == "done" and by_name["broken"].state == "failed"
    assert "planned" in by_name["broken"].error


def test_executor_map_on_two_workers_keeps_order_and_reraises(workers_on_each_database):
    workers = workers_on_each_database
    import executor_functions as functions

    with api.get_executor("eas", settings=workers.settings) as executor:
        assert list(executor.map(functions.square, range(200))) == [x * x for x in range(200)]
        assert executor.submit(functions.keyword, 5, b=2).result(120) == 3
        large = executor.submit(functions.big, 100_000)
        failing = executor.submit(functions.fail_on, 3, 3)
        assert large.result(120) == b"x" * 100_000
        with pytest.raises(functions.PlannedError, match="item 3 is the planned failure") as caught:
            failing.result(120)
        assert isinstance(caught.value.__cause__, api.RemoteTraceback)
        assert "fail_on" in caught.value.__cause__.text and "raise PlannedError" in caught.value.__cause__.text
        with pytest.raises(functions.PlannedError):
            list(executor.map(functions.fail_on, range(5), [2] * 5))
    with workers.engine.connect() as connection:
        ran_on = {
            row.worker_name
            for row in connection.execute(
                sa.select(attempts.c.worker_name).where(attempts.c.task_type == "python_function")
            )
        }
    assert ran_on == {"door-0", "door-1"}
    results = executor.jobs[0].results()  # every call joined the executor's one batch
    assert len({job.id for job in executor.jobs}) == 1 and len(results) == 200 + 3 + 5
    # the large result travelled as a file, the small ones as metadata
    assert sum("result_file" in result.metadata for result in results) == 1


def test_other_strategies_run_the_same_code():
    import executor_functions as functions

    for name in ("sequential", "multiprocessing"):
        with api.get_executor(name) as executor:
            assert list(executor.map(functions.square, range(10))) == [x * x for x in range(10)]
    with pytest.raises(NotImplementedError, match="slurm_workers.py"):
        api.get_executor("slurm")
    with pytest.raises(ValueError, match="unknown executor"):
        api.get_executor("nope")


def test_executor_refuses_functions_workers_cannot_import(eas_sqlite):
    with api.get_executor("eas", settings=eas_sqlite.settings) as executor:
        with pytest.raises(TypeError, match="importable"):
            executor.submit(lambda: 1)


def test_launch_outputs_feed_later_inputs(workers):
    reader = workers.script(
        "job_submission/launch.py",
        "-b",
        "files",
        "-i",
        "made/table.txt",
        "--",
        "sh",
        "-c",
        'cat "$EAS_INPUT_INPUT"',
        check=False,
    )
    assert reader.returncode == 2 and "no task produces file 'made/table.txt'" in reader.stderr
    workers.script(
        "job_submission/launch.py",
        "-b",
        "files",
        "-o",
        "table=made/table.txt",
        "--",
        "sh",
        "-c",
        'echo from-the-writer > "$EAS_OUTPUT_TABLE"',
    )
    result = workers.script(
        "job_submission/launch.py",
        "-b",
        "files",
        "-i",
        "made/table.txt",
        "--wait",
        "--",
        "sh",
        "-c",
        'cat "$EAS_INPUT_INPUT"',
    )
    assert "from-the-writer" in result.stdout
    with open(os.path.join(workers.settings.data_dir, "made", "table.txt")) as handle:
        assert handle.read() == "from-the-writer\n"
