"""init_schema.py: create (or upgrade) the database schema and load the task-type registries.

An existing database of an older schema version is upgraded in place, through the schema's revisions
(docs/migrations.md); one newer than this code is refused."""

from __future__ import annotations

import sys

from eas_controller import cli
from eas_controller.config import redact_url, save_settings

EPILOG = """examples:
  ./init_schema.py                                   embedded SQLite under ./data (the default)
  ./init_schema.py --db_host 127.0.0.1 --db_port 3306 --db_user root --db_name eas
  ./init_schema.py --db_user root --db_name eas      the same on this machine (host defaults to localhost)
  ./init_schema.py --db_engine sqlite3 --db_name plato   SQLite file <data dir>/plato.sqlite
  ./init_schema.py --db-url postgresql://postgres@127.0.0.1/eas
  ./init_schema.py --task-types my_types.yaml        add your own task types (remembered)
  ./init_schema.py --upgrade                         after installing a new release: apply pending revisions
The connection and the registry files are recorded in the settings file, so later scripts need no flags."""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    cli.add_seed_database_flags(parser)
    parser.add_argument("--task-types", action="append", metavar="FILE", default=None,
                        help="a task-type registry (YAML) to load in addition to the shipped one; repeatable")
    parser.add_argument("--upgrade", action="store_true",
                        help="apply the schema revisions this database lacks (a new database is created at the latest "
                             "version); plain init_schema.py does the same, --upgrade says so explicitly")
    parser.add_argument("--reset", action="store_true", help="drop every EAS table first (destroys all tasks)")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation with --reset")
    parser.add_argument("--no-save", action="store_true", help="do not record the connection in the settings file")
    return parser


def ensure_database_exists(url: str) -> None:
    """MySQL/MariaDB and PostgreSQL: create the named database when the server lacks it."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend not in ("mysql", "mariadb", "postgresql") or not parsed.database:
        return
    from eas_controller.database.engine import make_engine

    server_url = parsed._replace(database="postgres" if backend == "postgresql" else None)  # URL.set ignores None
    server = make_engine(server_url.render_as_string(hide_password=False))
    try:
        with server.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if backend == "postgresql":
                exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                            {"name": parsed.database}).first()
                if not exists:
                    connection.exec_driver_sql(
                        'CREATE DATABASE "%s"' % parsed.database.replace('"', '""'))
            else:
                connection.exec_driver_sql("CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET utf8mb4 COLLATE "
                                           "utf8mb4_unicode_ci" % parsed.database.replace("`", "``"))
    except Exception:
        pass  # no right to create databases: connecting to it below gives the clear error
    finally:
        server.dispose()


def initialise(args) -> int:
    import os

    from eas_controller.database.engine import write_transaction
    from eas_controller.database.manage import create_schema, drop_schema
    from eas_controller.registry import read_registries, store_registry

    if args.upgrade and args.reset:
        raise cli.CommandError("give either --upgrade (keeps every task) or --reset (drops them all), not both")
    settings = cli.settings_from(args)
    for note in cli.seed_database_notes(args):
        print("note: %s" % note)
    if args.task_types is not None:
        task_type_files = [os.path.abspath(path) for path in args.task_types]
    else:
        task_type_files = settings.task_type_files
    types = read_registries(task_type_files)  # validate before touching the database
    print("database: %s" % redact_url(settings.database_url))  # first, so a connection error says which
    ensure_database_exists(settings.database_url)
    engine = cli.connect(settings, check_schema=False)
    print("database driver: %s" % engine.dialect.driver)
    if args.reset:
        if not args.yes:
            if not sys.stdin.isatty():
                raise cli.CommandError("--reset destroys every task; add --yes to confirm (no terminal to ask on)")
            answer = input("This deletes every task, attempt and log in %s. Type 'reset' to continue: "
                           % redact_url(settings.database_url))
            if answer.strip() != "reset":
                raise cli.CommandError("reset not confirmed; nothing changed")
        drop_schema(engine)
        print("dropped all EAS tables")
    print(create_schema(engine))
    with write_transaction(engine) as connection:
        counts = store_registry(connection, types)
    print("task types: %d added, %d updated, %d unchanged (%s)" % (
        counts["added"], counts["updated"], counts["unchanged"], ", ".join(sorted(types))))
    if not args.no_save:
        path = save_settings(settings, db_url=settings.db_url, task_type_files=task_type_files)
        print("settings recorded in %s" % path)
    return 0


main = cli.command(build_parser, initialise)
