"""Schema migrations: a database made by schema version 1, with finished pipelines in it, upgraded by
``init_schema.py --upgrade`` on every back end without losing a row, then used for a new pipeline."""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa
from conftest import PROJECT_ROOT, Environment, service_url

from eas_controller.config import Settings
from eas_controller.database import manage, migrate, schema
from eas_controller.database.bulk import bulk_load_transaction, reset_sequences
from eas_controller.database.engine import make_engine

#: Rows written by EAS Controller at schema version 1 running demo_jobs/hello_pipeline.json and
#: demo_jobs/feature_tests/do_while.json to the end (every task done).
VERSION_1_ROWS = os.path.join(PROJECT_ROOT, "tests", "fixtures", "schema_v1_finished_pipelines.json")


def private_url(backend: str, tmp_path) -> str:
    """A database of its own (these tests drop and create tables, which the shared test database must keep)."""
    if backend == "sqlite":
        return "sqlite:///" + str(tmp_path / "migrated.sqlite")
    from eas_controller.commands.init_schema import ensure_database_exists

    url = sa.engine.make_url(service_url(backend))
    url = url.set(database=url.database + "_migrations").render_as_string(hide_password=False)
    ensure_database_exists(url)
    return url


def drop_everything(engine) -> None:
    manage.drop_schema(engine)
    assert not [name for name in sa.inspect(engine).get_table_names() if name.startswith("eas_")]


@pytest.fixture
def blank(backend, tmp_path):
    """An Environment on an empty private database (no schema yet)."""
    url = private_url(backend, tmp_path)
    engine = make_engine(url)
    drop_everything(engine)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = Settings(data_dir=str(data_dir), db_url=url, queue="sql", settings_path=str(tmp_path / "settings.yaml"))
    yield Environment(backend, settings, engine, tmp_path)
    drop_everything(engine)
    engine.dispose()


def make_version_1_database(engine) -> dict:
    """Schema version 1 from revision 0001's DDL, as version 1 left it (no Alembic record), filled with the
    rows version 1 wrote. Returns those rows, per table."""
    migrate.upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE %s" % migrate.VERSION_TABLE))
    with open(VERSION_1_ROWS) as handle:
        dump = json.load(handle)
    with bulk_load_transaction(engine) as connection:
        for table in schema.metadata_obj.sorted_tables:
            if table.name not in dump or table is schema.schema_info:
                continue
            columns = dump[table.name]["columns"]
            rows = [dict(zip(columns, row)) for row in dump[table.name]["rows"]]
            if rows:
                connection.execute(table.insert(), rows)
        reset_sequences(connection, [schema.metadata_obj.tables[name] for name in dump])
    return dump


def read_rows(engine, table_name: str, columns: list[str]) -> list[tuple]:
    table = schema.metadata_obj.tables[table_name]
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            sa.select(*[table.c[name] for name in columns]).order_by(*table.primary_key.columns))]


def test_revisions_end_at_this_codes_schema_version():
    assert migrate.revisions() == [migrate.revision_for(version) for version in range(1, schema.SCHEMA_VERSION + 1)]


def test_the_revisions_build_exactly_the_tables_of_schema_py(blank):
    """Upgrading from nothing through every revision gives what create_all gives: no difference left."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate.upgrade(blank.engine)
    with blank.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": migrate.VERSION_TABLE})
        differences = compare_metadata(context, schema.metadata_obj)
    assert differences == []
    assert manage.schema_version(blank.engine) == schema.SCHEMA_VERSION


def test_a_version_1_database_is_upgraded_without_losing_a_row_and_runs_a_new_pipeline(blank):
    engine = blank.engine
    dump = make_version_1_database(engine)
    assert manage.schema_version(engine) == 1 and migrate.current_revision(engine) is None
    before = {name: read_rows(engine, name, table["columns"]) for name, table in dump.items()}
    assert len(before["eas_tasks"]) == 17 and len(before["eas_attempts"]) == 13  # what version 1 wrote

    refused = blank.script("diagnostics/display_job_tree.py", check=False)
    assert refused.returncode == 2 and "version 1" in refused.stderr, refused.stderr
    assert "init_schema.py" in refused.stderr, refused.stderr

    upgraded = blank.script("database_initialisation/init_schema.py", "--upgrade")
    assert "upgraded schema version 1 to schema version %d (revisions 0002, 0003, 0004, 0005, 0006)" % schema.SCHEMA_VERSION \
        in upgraded.stdout, upgraded.stdout
    assert manage.schema_version(engine) == schema.SCHEMA_VERSION
    assert migrate.current_revision(engine) == migrate.head()

    after = {name: read_rows(engine, name, table["columns"]) for name, table in dump.items()}
    counts_before = {name: len(rows) for name, rows in before.items()}
    counts_after = {name: len(rows) for name, rows in after.items()}
    loaded_types = counts_after.pop("eas_task_types") - counts_before.pop("eas_task_types")
    assert counts_after == counts_before and loaded_types >= 0
    for name in before:
        if name not in ("eas_task_types", "eas_schema_info"):  # the registry is reloaded; the version moved on
            assert after[name] == before[name], name
    type_names = {row[1] for row in after["eas_task_types"]}
    assert {row[1] for row in before["eas_task_types"]} <= type_names
    assert read_rows(engine, "eas_workers", ["labels"]) == [(None,)] * counts_before["eas_workers"]
    assert read_rows(engine, "eas_control_progress", ["id"]) == []

    again = blank.script("database_initialisation/init_schema.py", "--upgrade")
    assert "schema version %d already present" % schema.SCHEMA_VERSION in again.stdout, again.stdout

    chain = os.path.join(PROJECT_ROOT, "demo_jobs", "hello_pipeline.json")
    run = blank.script("job_submission/run_local.py", "--tasks", chain, "--workers", "2", timeout=600)
    assert "succeeded" in run.stdout, run.stdout + run.stderr
    with engine.connect() as connection:
        jobs = connection.execute(sa.select(schema.jobs.c.id).order_by(schema.jobs.c.id)).scalars().all()
        new_states = connection.execute(
            sa.select(schema.tasks.c.state, sa.func.count()).where(schema.tasks.c.job_id == jobs[-1])
            .group_by(schema.tasks.c.state)).all()
    assert len(jobs) == counts_before["eas_jobs"] + 1 and jobs[-1] > max(row[0] for row in before["eas_jobs"])
    assert dict(new_states) == {"done": 10}
    for name in before:  # the old pipelines are still there, untouched
        if name not in ("eas_task_types", "eas_schema_info", "eas_workers", "eas_sql_queue"):
            assert read_rows(engine, name, dump[name]["columns"])[: len(before[name])] == before[name], name


def test_a_version_2_database_made_before_the_revisions_is_stamped_then_upgraded(blank):
    migrate.upgrade(blank.engine, "0002")
    with blank.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE %s" % migrate.VERSION_TABLE))
    upgraded = blank.script("database_initialisation/init_schema.py", "--upgrade")
    assert "upgraded schema version 2 to schema version %d (revisions 0003, 0004, 0005, 0006)" % schema.SCHEMA_VERSION \
        in upgraded.stdout, upgraded.stdout
    assert "labels" in {column["name"] for column in sa.inspect(blank.engine).get_columns("eas_workers")}


def test_a_database_newer_than_the_code_is_refused_in_one_line(blank):
    created = blank.script("database_initialisation/init_schema.py", "--upgrade")
    assert "created schema version %d" % schema.SCHEMA_VERSION in created.stdout, created.stdout
    with blank.engine.begin() as connection:  # a later release's revision, unknown here
        connection.execute(sa.text("UPDATE %s SET version_num = '0042'" % migrate.VERSION_TABLE))
    refused = blank.script("database_initialisation/init_schema.py", "--upgrade", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: the database has schema revision 0042, newer than this code (revision %s, schema version %d): "
        "upgrade EAS Controller" % (migrate.head(), schema.SCHEMA_VERSION)]
    with blank.engine.begin() as connection:
        connection.execute(sa.text("UPDATE %s SET version_num = '%s'" % (migrate.VERSION_TABLE, migrate.head())))
        connection.execute(schema.schema_info.update().values(value=str(schema.SCHEMA_VERSION + 1)))
    refused = blank.script("database_initialisation/init_schema.py", "--upgrade", check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: the database has schema version %d, newer than this code (%d): upgrade EAS Controller"
        % (schema.SCHEMA_VERSION + 1, schema.SCHEMA_VERSION)], refused.stderr
    both = blank.script("database_initialisation/init_schema.py", "--upgrade", "--reset", "--yes", check=False)
    assert both.returncode == 2 and "not both" in both.stderr, both.stderr


def test_the_queue_table_gets_its_autovacuum_settings_on_a_new_and_an_upgraded_database(blank):
    """PostgreSQL: eas_sql_queue and eas_workers are vacuumed after a fixed number of dead rows, set by
    init_schema on a new database and by revision 0006 on an older one; the other back ends have none."""
    from eas_controller.database.dialects import HIGH_CHURN_TABLES, table_settings

    def settings(table):
        with blank.engine.connect() as connection:
            return table_settings(connection, table)

    wanted = {table: {name: str(value) for name, value in parameters.items()}
              for table, parameters in HIGH_CHURN_TABLES.items()}
    expected = wanted if blank.backend == "postgresql" else {table: {} for table in wanted}
    created = blank.script("database_initialisation/init_schema.py", "--upgrade")
    assert "created schema version %d" % schema.SCHEMA_VERSION in created.stdout, created.stdout
    assert {table: settings(table) for table in wanted} == expected

    drop_everything(blank.engine)
    migrate.upgrade(blank.engine, "0005")
    assert {table: settings(table) for table in wanted} == {table: {} for table in wanted}
    upgraded = blank.script("database_initialisation/init_schema.py", "--upgrade")
    assert "(revisions 0006)" in upgraded.stdout, upgraded.stdout
    assert {table: settings(table) for table in wanted} == expected
