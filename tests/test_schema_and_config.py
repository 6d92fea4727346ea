"""Schema creation and configuration: init_schema.py as a user runs it, and the settings precedence rules."""

import dataclasses
import json
import os
import stat

import pytest
import sqlalchemy as sa
import yaml
from conftest import Environment

from eas_controller.config import ConfigError, Settings, load_settings, redact_url
from eas_controller.database import schema
from eas_controller.database.engine import version_refusal

PASSWORD = "s3cret-pw"


class ScriptEnvironment(Environment):
    """An Environment whose subprocesses do not see some variables (to test the settings file alone)."""

    hidden: tuple = ()

    @property
    def env(self) -> dict:
        environment = super().env
        for name in self.hidden:
            environment.pop(name, None)
        return environment


def without_variables(environment: Environment, *names: str) -> ScriptEnvironment:
    fields = {field.name: getattr(environment, field.name) for field in dataclasses.fields(environment)}
    result = ScriptEnvironment(**fields)
    result.hidden = names
    return result


def table_counts(engine) -> dict:
    with engine.connect() as connection:
        return {table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                for table in schema.metadata_obj.sorted_tables}


def write_chain(tmp_path, chain: dict, name: str = "job.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(chain))
    return str(path)


# -- init_schema.py ---------------------------------------------------------------------------------------

def test_init_schema_is_idempotent_and_records_the_version(eas):
    first = eas.script("database_initialisation/init_schema.py")
    second = eas.script("database_initialisation/init_schema.py")
    assert "schema version %d already present" % schema.SCHEMA_VERSION in second.stdout, second.stdout
    assert "0 added, 0 updated" in second.stdout, second.stdout
    assert "task types:" in first.stdout
    with eas.engine.connect() as connection:
        rows = connection.execute(sa.select(schema.schema_info)).all()
        names = {row.name for row in connection.execute(sa.select(schema.task_types.c.name))}
    assert [(row.key, row.value) for row in rows] == [("schema_version", str(schema.SCHEMA_VERSION))]
    assert {"null", "error", "sleep", "shell", "write_text"} <= names
    assert set(sa.inspect(eas.engine).get_table_names()) >= {table.name for table in schema.metadata_obj.sorted_tables}


def test_reset_refuses_without_yes_and_works_with_it(eas, tmp_path):
    eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, {"task_list": [{"task": "null"}]}))
    before = table_counts(eas.engine)
    assert before["eas_tasks"] == 2  # the chain and its task

    refused = eas.script("database_initialisation/init_schema.py", "--reset", check=False, input="")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--yes" in refused.stderr and "no terminal" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "dropped" not in refused.stdout
    assert table_counts(eas.engine) == before

    reset = eas.script("database_initialisation/init_schema.py", "--reset", "--yes")
    assert "dropped all EAS tables" in reset.stdout
    assert "created schema version %d" % schema.SCHEMA_VERSION in reset.stdout
    after = table_counts(eas.engine)
    assert after["eas_tasks"] == after["eas_jobs"] == 0
    assert after["eas_schema_info"] == 1 and after["eas_task_types"] >= 4


def run_on_terminal(environment: Environment, relative_path: str, *args: str, answer: str):
    """Run a script with a pseudo-terminal as standard input, typing ``answer`` at its prompt."""
    import pty
    import subprocess

    from conftest import PROJECT_ROOT

    path = os.path.join(PROJECT_ROOT, "eas_controller", relative_path)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([path, *args], cwd=os.path.dirname(path), env=environment.env, stdin=terminal,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(controller, (answer + "\n").encode())
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
    return process.returncode, stdout, stderr


def test_reset_on_a_terminal_asks_first(eas_sqlite, tmp_path):
    eas_sqlite.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, {"task_list": [{"task": "null"}]}))
    code, stdout, stderr = run_on_terminal(eas_sqlite, "database_initialisation/init_schema.py", "--reset", answer="no")
    assert code == 2 and "not confirmed" in stderr and "dropped" not in stdout, stdout + stderr
    assert table_counts(eas_sqlite.engine)["eas_tasks"] == 2
    code, stdout, stderr = run_on_terminal(eas_sqlite, "database_initialisation/init_schema.py", "--reset", answer="reset")
    assert code == 0 and "dropped all EAS tables" in stdout, stdout + stderr
    assert table_counts(eas_sqlite.engine)["eas_tasks"] == 0


def test_a_newer_schema_is_refused_with_a_clear_message(eas):
    def set_version(value: str) -> None:
        with eas.engine.begin() as connection:
            connection.execute(schema.schema_info.update().values(value=value))

    set_version("999")
    try:
        for path in ("database_initialisation/init_schema.py", "diagnostics/display_job_tree.py"):
            result = eas.script(path, check=False)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            assert "999" in result.stderr and str(schema.SCHEMA_VERSION) in result.stderr, result.stderr
    finally:  # the server databases are shared by the following tests
        set_version(str(schema.SCHEMA_VERSION))


def test_init_schema_upgrades_a_version_1_database_in_place(eas, tmp_path):
    """Version 2 added the control-progress table: init_schema.py adds it and keeps the existing work."""
    eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, {"task_list": [{"task": "null"}]}))
    schema.control_progress.drop(eas.engine)
    with eas.engine.begin() as connection:
        connection.execute(schema.schema_info.update().values(value="1"))
    refused = eas.script("diagnostics/display_job_tree.py", check=False)
    assert refused.returncode == 2 and "version 1" in refused.stderr and "init_schema.py" in refused.stderr, refused.stderr
    upgraded = eas.script("database_initialisation/init_schema.py")
    assert "schema version %d" % schema.SCHEMA_VERSION in upgraded.stdout, upgraded.stdout
    assert sa.inspect(eas.engine).has_table("eas_control_progress")
    assert table_counts(eas.engine)["eas_tasks"] == 2
    assert eas.script("diagnostics/display_job_tree.py").returncode == 0


def test_seed_flags_are_recorded_and_used_by_later_scripts(eas_mysql, tmp_path):
    url = sa.engine.make_url(eas_mysql.settings.database_url)
    environment = without_variables(eas_mysql, "EAS_DB_URL")
    result = environment.script("database_initialisation/init_schema.py", "--db_host", "127.0.0.1", "--db_port", "3306",
                                "--db_user", "root", "--db_name", url.database)
    expected = "mysql+pymysql://root@127.0.0.1:3306/%s" % url.database
    assert "database: %s" % expected in result.stdout
    with open(eas_mysql.settings.settings_path) as handle:
        recorded = yaml.safe_load(handle)
    assert recorded["db_url"] == expected
    assert stat.S_IMODE(os.stat(eas_mysql.settings.settings_path).st_mode) == 0o600

    submitted = environment.script("job_submission/submit.py", "--tasks",
                                   write_chain(tmp_path, {"job_name": "seeded", "task_list": [{"task": "null"}]}))
    assert "submitted job" in submitted.stdout
    with eas_mysql.engine.connect() as connection:
        assert connection.execute(sa.select(schema.jobs.c.name)).scalars().all() == ["seeded"]


@pytest.mark.parametrize("args, words", [
    (["--db_user", "eas_nobody", "--db_passwd", PASSWORD, "--db_name", "eas_nowhere"],
     ["error: cannot use the database", "Access denied for user 'eas_nobody'"]),  # no --db_host: this machine
    (["--db_host", "127.0.0.1", "--db-url", "sqlite:///x.sqlite"], ["either --db-url or --db_host"]),
])
def test_seed_flags_are_checked(eas_sqlite, args, words):
    result = eas_sqlite.script("database_initialisation/init_schema.py", *args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    if "--db_user" in args:
        assert "database: mysql+pymysql://eas_nobody:***@localhost:3306/eas_nowhere" in result.stdout, result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert not os.path.exists(eas_sqlite.settings.settings_path)


@pytest.fixture
def mysql_user_with_password(eas_mysql):
    """A MariaDB account with a password, allowed only on this test database."""
    database = sa.engine.make_url(eas_mysql.settings.database_url).database
    with eas_mysql.engine.connect() as connection:
        # the driver applies %-formatting to the statement, hence '%%' for MariaDB's any-host '%'
        connection.exec_driver_sql(f"CREATE USER IF NOT EXISTS 'eas_skel'@'%%' IDENTIFIED BY '{PASSWORD}'")
        connection.exec_driver_sql(f"ALTER USER 'eas_skel'@'%%' IDENTIFIED BY '{PASSWORD}'")
        connection.exec_driver_sql(f"GRANT ALL PRIVILEGES ON `{database}`.* TO 'eas_skel'@'%%'")
    return database


def test_password_is_never_printed(eas_mysql, mysql_user_with_password, tmp_path):
    database = mysql_user_with_password
    environment = without_variables(eas_mysql, "EAS_DB_URL")
    outputs = []

    def run(path, *args, check=True):
        result = environment.script(path, *args, check=check, input="")
        outputs.append(result.stdout + result.stderr)
        return result

    run("database_initialisation/init_schema.py", "--db_host", "127.0.0.1", "--db_port", "3306", "--db_user", "eas_skel",
        "--db_passwd", PASSWORD, "--db_name", database)
    assert "eas_skel:***@127.0.0.1" in outputs[-1]
    with open(eas_mysql.settings.settings_path) as handle:  # kept (mode 0600) so later scripts need no flags
        assert PASSWORD in yaml.safe_load(handle)["db_url"]
    run("job_submission/submit.py", "--tasks", write_chain(tmp_path, {"task_list": [{"task": "null"}]}))
    run("queue_management/schedule_all_waiting_tasks.py", "--once")
    run("diagnostics/display_job_tree.py")
    wrong = run("database_initialisation/init_schema.py", "--db_host", "127.0.0.1", "--db_user", "eas_skel",
                "--db_passwd", "wrong-" + PASSWORD, "--db_name", database, "--no-save", check=False)
    assert wrong.returncode == 2 and "Access denied" in wrong.stderr, wrong.stderr
    refused = run("job_submission/submit.py", "--db-url", "mysql+pymysql://eas_skel:%s@127.0.0.1:1/%s" % (PASSWORD, database),
                  "--tasks", write_chain(tmp_path, {"task_list": [{"task": "null"}]}), check=False)
    assert refused.returncode == 2 and "error:" in refused.stderr, refused.stderr
    for output in outputs:
        assert PASSWORD not in output, output
    with eas_mysql.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(schema.attempts)).scalar() == 1


@pytest.mark.parametrize("dialect, version, refused", [
    ("mariadb", "10.5.23-MariaDB-0+deb11u1", True),
    ("mysql", "10.5.23-MariaDB-0+deb11u1", True),
    ("mysql", "10.6.0-MariaDB", False),
    ("mysql", "10.11.6-MariaDB-0+deb12u1", False),
    ("mysql", "11.4.2-MariaDB-log", False),
    ("mysql", "5.5.5-10.11.6-MariaDB-0+deb12u1", False),  # replication-protocol prefix of old clients
    ("mysql", "5.5.5-10.4.1-MariaDB", True),
    ("mysql", "5.7.44-log", True),
    ("mysql", "5.5.5", True),
    ("mysql", "8.0.36-0ubuntu0.22.04.1", False),
    ("mysql", "8.4.0", False),
    ("mysql", "weird", False),  # unreadable: let the server decide
    ("postgresql", (9, 4, 26), True),
    ("postgresql", (16, 2), False),
    ("sqlite", "3.40.1", False),
])
def test_server_version_decision(dialect, version, refused):
    message = version_refusal(dialect, version)
    assert bool(message) == refused, message
    if refused:
        assert "too old" in message and ("10.6" in message or "8.0" in message or "9.5" in message)


def test_this_servers_versions_are_accepted(eas):
    from eas_controller.database.engine import check_server_version

    check_server_version(eas.engine)  # raises DatabaseError when refused


# -- configuration ----------------------------------------------------------------------------------------

def settings_file(tmp_path, content) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def test_defaults_when_nothing_is_configured(tmp_path):
    settings = load_settings(config_path=str(tmp_path / "absent.yaml"), environ={})
    defaults = Settings()
    assert (settings.queue, settings.lease_seconds, settings.max_attempts, settings.db_url) == (
        defaults.queue, defaults.lease_seconds, defaults.max_attempts, None)
    assert settings.database_url == "sqlite:///" + os.path.join(settings.data_dir, "eas.sqlite")


@pytest.mark.parametrize("name, variable, file_value, env_value, flag_value, expected", [
    ("db_url", "EAS_DB_URL", "sqlite:///file.db", "sqlite:///env.db", "sqlite:///flag.db", None),
    ("queue", "EAS_QUEUE", "amqp", "sql", "amqp", None),
    ("lease_seconds", "EAS_LEASE_SECONDS", 30, "20", 10, (30.0, 20.0, 10.0)),
    ("max_attempts", "EAS_MAX_ATTEMPTS", 2, "3", 4, (2, 3, 4)),
])
def test_precedence_flag_over_environment_over_file_over_default(tmp_path, name, variable, file_value, env_value,
                                                                 flag_value, expected):
    path = settings_file(tmp_path, {name: file_value})
    expected = expected or (file_value, env_value, flag_value)
    default = getattr(Settings(), name)
    assert getattr(load_settings(config_path=str(tmp_path / "none.yaml"), environ={}), name) == default
    assert getattr(load_settings(config_path=path, environ={}), name) == expected[0]
    assert getattr(load_settings(config_path=path, environ={variable: env_value}), name) == expected[1]
    assert getattr(load_settings({name: flag_value}, config_path=path, environ={variable: env_value}), name) == expected[2]
    assert getattr(load_settings({name: None}, config_path=path, environ={variable: env_value}), name) == expected[1]


def test_settings_file_is_found_through_the_environment(tmp_path):
    path = settings_file(tmp_path, {"queue": "amqp"})
    assert load_settings(environ={"EAS_CONFIG": path}).queue == "amqp"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "settings.yaml").write_text("lease_seconds: 7\n")
    settings = load_settings(environ={"EAS_DATA_DIR": str(data_dir)})
    assert settings.lease_seconds == 7.0 and settings.data_dir == str(data_dir)
    assert settings.database_url == "sqlite:///" + str(data_dir / "eas.sqlite")
    flagged = load_settings({"data_dir": str(tmp_path / "other")}, environ={"EAS_DATA_DIR": str(data_dir)})
    assert flagged.data_dir == str(tmp_path / "other")


@pytest.mark.parametrize("content, words", [
    ({"db_ulr": "sqlite:///x.db"}, ["unknown setting", "db_ulr"]),
    ({"queue": "redis"}, ["queue must be one of", "redis"]),
    ({"lease_seconds": "soon"}, ["lease_seconds", "soon"]),
    ({"lease_seconds": -5}, ["lease_seconds", "positive"]),
    ({"max_attempts": 0}, ["max_attempts", "positive"]),
    ({"task_type_files": "types.yaml"}, ["task_type_files", "list"]),
    ("- just\n- a list\n", ["mapping"]),
    ("queue: [unclosed\n", ["not valid YAML"]),
])
def test_bad_settings_file_gives_a_clear_error_naming_it(tmp_path, content, words):
    path = settings_file(tmp_path, content)
    with pytest.raises(ConfigError) as raised:
        load_settings(config_path=path, environ={})
    message = str(raised.value)
    assert path in message
    for word in words:
        assert word in message


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="EAS_LEASE_SECONDS"):
        load_settings(config_path=str(tmp_path / "none.yaml"), environ={"EAS_LEASE_SECONDS": "long"})


def test_bad_settings_file_stops_a_script_with_one_line(eas_sqlite, tmp_path):
    with open(eas_sqlite.settings.settings_path, "w") as handle:
        handle.write("qeueu: sql\n")
    result = eas_sqlite.script("diagnostics/display_job_tree.py", check=False)
    assert result.returncode == 2
    assert eas_sqlite.settings.settings_path in result.stderr and "qeueu" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url, shown", [
    ("mysql+pymysql://root:%s@127.0.0.1:3306/eas" % PASSWORD, "mysql+pymysql://root:***@127.0.0.1:3306/eas"),
    ("mysql://eas:%s@db.example:3306/eas?charset=utf8mb4" % PASSWORD, "mysql://eas:***@db.example:3306/eas?charset=utf8mb4"),
    ("postgresql+psycopg://postgres:%s@127.0.0.1:5432/eas" % PASSWORD, "postgresql+psycopg://postgres:***@127.0.0.1:5432/eas"),
    ("amqp://guest:%s@127.0.0.1:5672/%%2F" % PASSWORD, "amqp://guest:***@127.0.0.1:5672/%2F"),
    ("mysql://u:%s@x@127.0.0.1/eas" % PASSWORD, "mysql://u:***@127.0.0.1/eas"),  # an unescaped @ in the password
    ("postgresql://u:p%%40ss%%3A%s@h/db" % PASSWORD, "postgresql://u:***@h/db"),
    ("mysql+pymysql://root@127.0.0.1/eas", "mysql+pymysql://root@127.0.0.1/eas"),
    ("sqlite:////tmp/data/eas.sqlite", "sqlite:////tmp/data/eas.sqlite"),
    ("cannot connect to mysql://root:%s@h/db: refused" % PASSWORD, "cannot connect to mysql://root:***@h/db: refused"),
])
def test_redact_url_hides_passwords(url, shown):
    assert redact_url(url) == shown
    assert PASSWORD not in redact_url(url)


# -- every script is a door that answers --help ------------------------------------------------------------

ROLE_FOLDERS = ("database_initialisation", "job_submission", "queue_management", "worker_orchestration", "diagnostics",
                "web_interface")


def role_scripts() -> list:
    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eas_controller")
    return sorted("%s/%s" % (folder, name) for folder in ROLE_FOLDERS if os.path.isdir(os.path.join(package, folder))
                  for name in os.listdir(os.path.join(package, folder)) if name.endswith(".py") and name != "__init__.py"
                  and _is_script(os.path.join(package, folder, name)))


def _is_script(path: str) -> bool:
    """A file starting with #! (a script: it must also be executable); library modules live in web_interface/ too."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"#!"


class FreshShell(Environment):
    """A login-like environment: no virtual environment on PATH or activated, no EAS_* settings."""

    @property
    def env(self) -> dict:
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith(("EAS_", "PYTHON", "VIRTUAL_ENV", "CONDA"))}
        environment["PATH"] = os.pathsep.join(part for part in os.environ.get("PATH", "").split(os.pathsep)
                                              if ".venv" not in part and "/venv" not in part)
        return environment


def test_role_folders_hold_scripts():
    assert {"database_initialisation/init_schema.py", "job_submission/submit.py",
            "queue_management/schedule_all_waiting_tasks.py", "diagnostics/display_job_tree.py"} <= set(role_scripts())


@pytest.mark.parametrize("script", role_scripts())
def test_every_script_answers_help_from_a_fresh_shell(eas_sqlite, script):
    fields = {field.name: getattr(eas_sqlite, field.name) for field in dataclasses.fields(eas_sqlite)}
    result = FreshShell(**fields).script(script, "--help", input="")
    assert result.stdout.startswith("usage: "), result.stdout
    assert "--help" in result.stdout and len(result.stdout.splitlines()) > 3
    assert result.stderr == ""


# -- MySQL/MariaDB drivers --------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, driver", [("mysql", "mysqldb"), ("mariadb", "mysqldb"), ("mysql+pymysql", "pymysql"),
                                            ("mariadb+pymysql", "pymysql")])
def test_mysql_urls_pick_mysqlclient_unless_they_name_a_driver(eas_mysql, scheme, driver):
    from eas_controller.database.engine import make_engine

    url = sa.engine.make_url(eas_mysql.settings.database_url).set(drivername=scheme)
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        assert engine.dialect.driver == driver
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT @@tx_isolation").scalar() == "READ-COMMITTED"
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql"])
def test_a_real_deadlock_is_retryable_with_either_driver(eas_mysql, scheme):
    """Two transactions lock two rows in opposite orders: the server kills one (1213); both drivers' errors are
    recognised as worth retrying, and a lost connection too."""
    import threading

    from eas_controller.database.engine import is_retryable, make_engine

    url = sa.engine.make_url(eas_mysql.settings.database_url).set(drivername=scheme)
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS eas_test_deadlock")
            connection.exec_driver_sql("CREATE TABLE eas_test_deadlock (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
            connection.exec_driver_sql("INSERT INTO eas_test_deadlock VALUES (1, 0), (2, 0)")
        both_hold_one = threading.Barrier(2, timeout=30)
        errors = []

        def cross(first: int, second: int) -> None:
            try:
                with engine.begin() as connection:
                    connection.exec_driver_sql("UPDATE eas_test_deadlock SET v = v + 1 WHERE id = %d" % first)
                    both_hold_one.wait()
                    connection.exec_driver_sql("UPDATE eas_test_deadlock SET v = v + 1 WHERE id = %d" % second)
            except sa.exc.DBAPIError as error:
                errors.append(error)

        threads = [threading.Thread(target=cross, args=pair) for pair in ((1, 2), (2, 1))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(errors) == 1, errors
        assert errors[0].orig.args[0] == 1213 and is_retryable(errors[0])
        with engine.connect() as victim, engine.connect() as killer:
            killer.exec_driver_sql("KILL %d" % victim.exec_driver_sql("SELECT CONNECTION_ID()").scalar())
            with pytest.raises(sa.exc.DBAPIError) as lost:
                victim.exec_driver_sql("SELECT 1")
            assert is_retryable(lost.value)
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE eas_test_deadlock")
    finally:
        engine.dispose()


def test_a_script_whose_reader_goes_away_stops_quietly(eas_sqlite, tmp_path):
    """``submit.py --dry-run ... | head -1``: the pipe closes early; no traceback, the status of a SIGPIPE."""
    import subprocess

    chain = tmp_path / "big.json"
    chain.write_text(json.dumps({"job_name": "big", "task_list": [
        {"task": "execution_for_loop", "parameter": "i", "linear_range": [0, 2999, 3000],
         "task_list": [{"task": "null"}]}]}))
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eas_controller",
                        "job_submission", "submit.py")
    process = subprocess.Popen([path, "--tasks", str(chain), "--dry-run"], cwd=os.path.dirname(path),
                               env=eas_sqlite.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # as head does after its line
    stderr = process.stderr.read().decode()
    assert process.wait(120) == 141, stderr
    assert first and stderr == ""
