"""The task-type registry: the shipped file loads, bad files give clear errors, edits reach the database."""

import os

import pytest
import sqlalchemy as sa
import yaml
from test_submit_and_run import run_workers

from eas_controller.database.schema import task_types
from eas_controller.registry import SHIPPED_REGISTRY, RegistryError, read_registries, read_registry_file


def test_shipped_registry_loads():
    types = read_registries([])
    assert {"null", "error", "sleep", "shell"} <= set(types)
    assert types["null"].kind == "python" and types["shell"].kind == "command"
    assert all(t.source == SHIPPED_REGISTRY for t in types.values())
    assert all(t.cpu > 0 for t in types.values())


def test_test_registry_loads_on_top_of_the_shipped_one():
    types = read_registries([os.path.join(os.path.dirname(__file__), "task_types_test.yaml")])
    assert {"null", "write_text", "shell_product"} <= set(types)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "my_types.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, words", [
    ("task_types:\n  fit:\n    python: eas_controller.tasks.builtin:sleep\n    cores: 4\n",
     ["'fit'", "unknown key", "cores"]),
    ("task_types:\n  fit:\n    resources: {cpu: 1}\n", ["'fit'", "exactly one of 'python'", "'command'"]),
    ("task_types:\n  fit:\n    python: eas_controller.tasks.builtin:sleep\n    command: echo hi\n",
     ["'fit'", "exactly one of"]),
    ("task_types:\n  fit:\n    command: echo\n    resources: {cpu: -1}\n", ["'fit'", "resources.cpu", "-1"]),
    ("task_types:\n  fit:\n    command: echo\n    resources: {memory_gb: -2}\n", ["'fit'", "resources.memory_gb"]),
    ("task_types:\n  fit:\n    command: echo\n    resources: {gpu: 0.5}\n", ["'fit'", "resources.gpu", "whole"]),
    ("task_types:\n  fit:\n    command: echo\n    resources: {cpus: 2}\n", ["'fit'", "unknown resource", "cpus"]),
    ("task_types:\n  fit:\n    command: echo\n    resources: {cpu: 0}\n", ["'fit'", "resources.cpu", "greater than 0"]),
    ("task_types:\n  fit:\n    command: echo\n    resources: 4\n", ["'fit'", "resources must be a mapping"]),
    ("task_types:\n  fit:\n    python: no_such_module_here:run\n", ["'fit'", "cannot be imported", "no_such_module_here"]),
    ("task_types:\n  fit:\n    python: eas_controller.tasks.builtin:no_such_function\n",
     ["'fit'", "cannot be imported", "no_such_function"]),
    ("task_types:\n  fit:\n    python: eas_controller.tasks.builtin\n", ["'fit'", "module:function"]),
    ("task_types:\n  null:\n    python: eas_controller.tasks.builtin:do_nothing\n", ["null", '"null":']),
    ("task_types:\n  fit:\n    command: echo\n    max_attempts: 0\n", ["'fit'", "max_attempts"]),
    ("task_types:\n  execution_for_loop:\n    command: echo\n", ["execution_for_loop", "built in"]),
    ("tasks_types:\n  fit:\n    command: echo\n", ["'task_types'"]),
    ("task_types:\n  fit: [unclosed\n", ["not valid YAML"]),
])
def test_bad_registry_gives_a_clear_error_naming_the_file(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(RegistryError) as raised:
        read_registry_file(path)
    message = str(raised.value)
    assert path in message, message
    for word in words:
        assert word in message, message


def test_missing_registry_file_is_named(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        read_registries([str(tmp_path / "absent.yaml")])


def test_bad_registry_stops_init_schema_before_touching_the_database(eas, tmp_path):
    path = write(tmp_path, "task_types:\n  fit:\n    command: echo\n    resources: {cpu: 0}\n")
    result = eas.script("database_initialisation/init_schema.py", "--task-types", path, check=False)
    assert result.returncode == 2
    assert path in result.stderr and "resources.cpu" in result.stderr and "Traceback" not in result.stderr
    with eas.engine.connect() as connection:
        assert connection.execute(sa.select(task_types.c.id).where(task_types.c.name == "fit")).first() is None
    assert not os.path.exists(eas.settings.settings_path)


def row_of(engine, name):
    with engine.connect() as connection:
        return connection.execute(sa.select(task_types).where(task_types.c.name == name)).one()


def test_reloading_an_edited_registry_updates_the_database(eas, tmp_path):
    path = write(tmp_path, "task_types:\n  fit:\n    command: \"fit --in {inputs[lc]}\"\n"
                           "    resources: {cpu: 1, gpu: 0, memory_gb: 2}\n")
    first = eas.script("database_initialisation/init_schema.py", "--task-types", path)
    assert "1 added" in first.stdout, first.stdout
    assert row_of(eas.engine, "fit").memory_gb == 2.0

    with open(path, "w") as handle:
        handle.write("task_types:\n  fit:\n    command: \"fit --fast --in {inputs[lc]}\"\n"
                     "    container: eas-worker-fit\n    resources: {cpu: 2, gpu: 0, memory_gb: 8}\n    max_attempts: 3\n")
    second = eas.script("database_initialisation/init_schema.py", "--task-types", path)
    assert "0 added, 1 updated" in second.stdout, second.stdout
    row = row_of(eas.engine, "fit")
    assert (row.target, row.cpu, row.memory_gb, row.max_attempts, row.container) == (
        "fit --fast --in {inputs[lc]}", 2.0, 8.0, 3, "eas-worker-fit")
    assert row.source == path

    with open(eas.settings.settings_path) as handle:
        assert yaml.safe_load(handle)["task_type_files"] == [path]
    third = eas.script("database_initialisation/init_schema.py")  # no flag: the remembered file is reloaded
    assert "0 added, 0 updated" in third.stdout and "fit" in third.stdout, third.stdout


def test_registered_python_type_runs_without_the_registry_file(eas, tmp_path):
    """Workers use the database's definitions, not the YAML file (which may not exist on their machine)."""
    path = write(tmp_path, "task_types:\n  nap:\n    python: eas_controller.tasks.builtin:sleep\n"
                           "    resources: {cpu: 1, memory_gb: 0.1}\n")
    eas.script("database_initialisation/init_schema.py", "--task-types", path)
    os.remove(path)
    chain = tmp_path / "job.json"
    chain.write_text('{"task_list": [{"task": "nap", "seconds": 0}]}')
    eas.script("job_submission/submit.py", "--tasks", str(chain))
    run_workers(eas, 1, "--task-types", "nap")
    with eas.engine.connect() as connection:
        states = connection.execute(sa.text("SELECT state FROM eas_tasks WHERE task_type = 'nap'")).scalars().all()
    assert states == ["done"]


def test_every_shipped_implementation_imports():
    """init_schema.py does not import the shipped implementations (some need the optional science
    libraries); here, with every dependency installed, each one must import."""
    from eas_controller.registry import SHIPPED_REGISTRY, read_registry_file

    types = read_registry_file(SHIPPED_REGISTRY, check_imports=True)
    assert {"synthesis_psls", "transit_search_tls", "python_function", "shell"} <= {t.name for t in types}
