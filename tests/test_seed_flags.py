"""The seed's command-line flags with the seed's meaning: init_schema.py --db_engine, the worker's database and
broker flags, db_save.py without --output, and seed flags without a host meaning this machine."""

import os
import re
import subprocess
import time
import urllib.parse

import pytest
import sqlalchemy as sa
import yaml
from conftest import PROJECT_ROOT, make_environment
from queue_helpers import cleanup, environment_for, schedule, submit  # noqa: F401
from test_schema_and_config import PASSWORD, mysql_user_with_password, without_variables  # noqa: F401

from eas_controller.database import schema
from eas_controller.database.engine import make_engine

SCRIPT_VARIABLES = ("EAS_DB_URL", "EAS_QUEUE", "EAS_AMQP_URL")


def database_name(environment) -> str:
    return sa.engine.make_url(environment.settings.database_url).database


def recorded_settings(environment) -> dict:
    with open(environment.settings.settings_path) as handle:
        return yaml.safe_load(handle)


def write_tasks(count: int) -> list:
    return [dict(task="write_text", name="w%d" % number, text="seed %d" % number, outputs={"text": "w%d.txt" % number})
            for number in range(count)]


def run_burst_worker(environment, scheduled, *flags) -> str:
    """Run worker.py --burst with ``flags`` as a user would, while this test schedules on ``scheduled``
    (the root chain finishes only through the scheduler, and burst mode waits for it); returns its output."""
    script = os.path.join(PROJECT_ROOT, "eas_controller", "worker_orchestration", "worker.py")
    log_path = os.path.join(str(environment.tmp_path), "worker-%d.log" % time.time_ns())
    with open(log_path, "w") as log:
        process = subprocess.Popen([script, "--burst", "--poll-interval", "0.2", *flags], cwd=os.path.dirname(script),
                                   env=environment.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        schedule(scheduled)
        time.sleep(0.3)
    if process.poll() is None:
        process.kill()
    process.wait()
    with open(log_path) as handle:
        output = handle.read()
    assert process.returncode == 0, output
    return output


def assert_all_done(engine, count: int) -> None:
    with engine.connect() as connection:
        states = connection.execute(sa.select(schema.tasks.c.state).where(schema.tasks.c.task_type == "write_text")
                                    ).scalars().all()
    assert sorted(states) == ["done"] * count, states


def test_db_engine_sqlite3_names_a_file_in_the_data_directory(eas_sqlite, tmp_path):
    environment = without_variables(eas_sqlite, *SCRIPT_VARIABLES)
    result = environment.script("database_initialisation/init_schema.py", "--db_engine", "sqlite3", "--db_name", "plato",
                                "--db_user", "ignored", "--db_passwd", PASSWORD)
    path = os.path.join(eas_sqlite.settings.data_dir, "plato.sqlite")
    assert "database: sqlite:///%s" % path in result.stdout, result.stdout
    assert "--db_user, --db_passwd not used by --db_engine sqlite3" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert recorded_settings(eas_sqlite)["db_url"] == "sqlite:///" + path
    assert "eas_tasks" in sa.inspect(make_engine("sqlite:///" + path)).get_table_names()
    job = tmp_path / "job.json"
    job.write_text('{"job_name": "on_plato", "task_list": [{"task": "null"}]}')
    environment.script("job_submission/submit.py", "--tasks", str(job))  # later scripts follow the settings file
    with make_engine("sqlite:///" + path).connect() as connection:
        assert connection.execute(sa.select(schema.jobs.c.name)).scalars().all() == ["on_plato"]


def test_db_engine_sqlite3_without_a_name_is_the_default_file(eas_sqlite):
    environment = without_variables(eas_sqlite, *SCRIPT_VARIABLES)
    result = environment.script("database_initialisation/init_schema.py", "--db_engine", "sqlite3", "--no-save")
    assert "database: sqlite:///%s" % os.path.join(eas_sqlite.settings.data_dir, "eas.sqlite") in result.stdout


def test_db_engine_mysql_without_db_host_means_localhost(eas_mysql):
    environment = without_variables(eas_mysql, *SCRIPT_VARIABLES)
    name = database_name(eas_mysql)
    result = environment.script("database_initialisation/init_schema.py", "--db_engine", "mysql", "--db_user", "root",
                                "--db_name", name)
    expected = "mysql+pymysql://root@localhost:3306/%s" % name
    assert "database: %s" % expected in result.stdout, result.stdout
    assert recorded_settings(eas_mysql)["db_url"] == expected


def test_password_without_db_host_connects_to_localhost(eas_mysql, mysql_user_with_password):
    environment = without_variables(eas_mysql, *SCRIPT_VARIABLES)
    result = environment.script("database_initialisation/init_schema.py", "--db_user", "eas_skel", "--db_passwd", PASSWORD,
                                "--db_name", mysql_user_with_password, "--no-save")
    assert "database: mysql+pymysql://eas_skel:***@localhost:3306/" in result.stdout, result.stdout
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("args, words", [
    (["--db_port", "1", "--db_name", "nowhere"], ["error: cannot use the database", "localhost"]),
    (["--db_engine", "sqlite3", "--db_name", "a/b"], ["--db_name", "SQLite file"]),
    (["--db_engine", "postgres"], ["invalid choice", "sqlite3"]),
    (["--db_name", "x", "--db-url", "sqlite:///x.sqlite"], ["either --db-url or --db_name"]),
])
def test_bad_seed_flags_are_one_line_errors(eas_sqlite, args, words):
    environment = without_variables(eas_sqlite, *SCRIPT_VARIABLES)
    result = environment.script("database_initialisation/init_schema.py", *args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert not os.path.exists(eas_sqlite.settings.settings_path)


def test_db_save_without_output_names_the_file_from_the_date(eas_sqlite, tmp_path):
    submit(eas_sqlite, write_tasks(2))
    folder = tmp_path / "saves"
    folder.mkdir()
    before = time.strftime("%Y%m%d")
    script = os.path.join(PROJECT_ROOT, "eas_controller", "database_initialisation", "db_save.py")
    result = subprocess.run([script, "--quiet"], cwd=folder, env=eas_sqlite.env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    (name,) = os.listdir(folder)
    assert re.fullmatch(r"\d{8}_\d{6}\.jsonl\.gz", name), name
    assert name[:8] in (before, time.strftime("%Y%m%d"))
    assert "to %s" % name in result.stdout, result.stdout
    (tmp_path / "restored").mkdir()
    target = make_environment("sqlite", tmp_path / "restored")
    restored = target.script("database_initialisation/db_restore.py", "--input", str(folder / name), "--force")
    assert restored.returncode == 0
    with target.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(schema.tasks)).scalar() == 3


def test_worker_seed_database_flags_run_a_task_in_burst_mode(eas_mysql, mysql_user_with_password):
    submit(eas_mysql, write_tasks(3))
    schedule(eas_mysql)
    environment = without_variables(eas_mysql, *SCRIPT_VARIABLES)  # only the flags say where the database is
    output = run_burst_worker(environment, eas_mysql, "--concurrency", "2",
                              "--db_host", "127.0.0.1", "--db_port", "3306", "--db_user", "eas_skel",
                              "--db_passwd", PASSWORD, "--db_name", mysql_user_with_password,
                              "--queue_implementation", "sql")
    assert PASSWORD not in output
    assert_all_done(eas_mysql.engine, 3)
    for number in range(3):
        with open(os.path.join(eas_mysql.settings.data_dir, "w%d.txt" % number)) as handle:
            assert handle.read() == "seed %d" % number


def test_worker_db_engine_sqlite3(tmp_path):
    environment = make_environment("sqlite", tmp_path, url="sqlite:///" + str(tmp_path / "data" / "plato.sqlite"))
    submit(environment, write_tasks(2))
    schedule(environment)
    run_burst_worker(without_variables(environment, *SCRIPT_VARIABLES), environment, "--db_engine", "sqlite3",
                     "--db_name", "plato")
    assert_all_done(environment.engine, 2)
    environment.engine.dispose()


@pytest.mark.parametrize("with_hosts", [True, False], ids=["hosts-given", "hosts-default-localhost"])
def test_worker_seed_broker_flags_run_a_task_in_burst_mode(tmp_path, cleanup, with_hosts):  # noqa: F811
    environment = environment_for("amqp", "mysql", tmp_path)
    cleanup(environment)
    broker = urllib.parse.urlparse(environment.settings.amqp_url)
    submit(environment, write_tasks(3))
    schedule(environment)
    flags = ["--db_user", "root", "--db_name", database_name(environment), "--mq_port", str(broker.port or 5672),
             "--mq_user", urllib.parse.unquote(broker.username), "--mq_passwd", urllib.parse.unquote(broker.password)]
    if with_hosts:
        flags += ["--db_host", "127.0.0.1", "--mq_host", broker.hostname, "--queue_implementation", "amqp"]
    output = run_burst_worker(without_variables(environment, *SCRIPT_VARIABLES), environment, *flags)
    assert ":%s@" % broker.password not in output
    assert_all_done(environment.engine, 3)
    with environment.engine.connect() as connection:
        assert set(connection.execute(sa.select(schema.attempts.c.queue)).scalars()) == {"amqp"}


def test_init_queues_broker_flags_without_mq_host_mean_localhost(tmp_path, cleanup):  # noqa: F811
    environment = environment_for("amqp", "sqlite", tmp_path)
    cleanup(environment)
    broker = urllib.parse.urlparse(environment.settings.amqp_url)
    result = without_variables(environment, "EAS_QUEUE", "EAS_AMQP_URL").script(
        "database_initialisation/init_queues.py", "--mq_port", str(broker.port or 5672),
        "--mq_user", urllib.parse.unquote(broker.username), "--mq_passwd", urllib.parse.unquote(broker.password))
    expected = "amqp://%s:***@localhost:%d/%%2F" % (broker.username, broker.port or 5672)
    assert "queue: RabbitMQ at %s" % expected in result.stdout, result.stdout
    assert ":%s@" % broker.password not in result.stdout + result.stderr
    recorded = recorded_settings(environment)
    assert recorded["queue"] == "amqp" and "@localhost:" in recorded["amqp_url"]
    both = without_variables(environment, "EAS_QUEUE", "EAS_AMQP_URL").script(
        "database_initialisation/init_queues.py", "--mq_host", "localhost", "--amqp-url", environment.settings.amqp_url,
        check=False)
    assert both.returncode == 2 and "either --amqp-url or --mq_host" in both.stderr, both.stderr
