"""init_schema.py: create (or upgrade) the database schema and load the task-type registries.

An existing database of an older schema version is upgraded in place, through the schema's revisions
(docs/migrations.md); one newer than this code is refused."""

from __future__ import annotations

import sys
import urllib.parse

from eas_controller import cli
from eas_controller.config import redact_url, save_settings

EPILOG = """examples:
  ./init_schema.py                                   embedded SQLite under ./data (the default)
  ./init_schema.py --db_host 127.0.0.1 --db_port 3306 --db_user root --db_name eas
  ./init_schema.py --db-url postgresql://postgres@127.0.0.1/eas
  ./init_schema.py --task-types my_types.yaml        add your own task types (remembered)
  ./init_schema.py --upgrade                         after installing a new release: apply pending revisions
The connection and the registry files are recorded in the settings file, so later scripts need no flags."""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    seed = parser.add_argument_group("MySQL/MariaDB connection (alternative to --db-url)")
    seed.add_argument("--db_host", help="database host")
    seed.add_argument("--db_port", type=int, help="database port (default 3306)")
    seed.add_argument("--db_user", help="database user (default root)")
    seed.add_argument("--db_passwd", help="database password (stored in the settings file, never printed)")
    seed.add_argument("--db_name", help="database name (default eas; created if missing)")
    parser.add_argument("--task-types", action="append", metavar="FILE", default=None,
                        help="a task-type registry (YAML) to load in addition to the shipped one; repeatable")
    parser.add_argument("--upgrade", action="store_true",
                        help="apply the schema revisions this database lacks (a new database is created at the latest "
                             "version); plain init_schema.py does the same, --upgrade says so explicitly")
    parser.add_argument("--reset", action="store_true", help="drop every EAS table first (destroys all tasks)")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation with --reset")
    parser.add_argument("--no-save", action="store_true", help="do not record the connection in the settings file")
    return parser


SEED_FLAGS = ("db_port", "db_user", "db_passwd", "db_name")


def mysql_url(args) -> str:
    password = ":" + urllib.parse.quote(args.db_passwd, safe="") if args.db_passwd else ""
    return "mysql+pymysql://%s%s@%s:%d/%s" % (urllib.parse.quote(args.db_user or "root", safe=""), password,
                                              args.db_host, args.db_port or 3306, args.db_name or "eas")


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


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: initialise(args))


def initialise(args) -> int:
    import os

    from eas_controller.database.engine import write_transaction
    from eas_controller.database.manage import create_schema, drop_schema
    from eas_controller.registry import read_registries, store_registry

    if args.upgrade and args.reset:
        raise cli.CommandError("give either --upgrade (keeps every task) or --reset (drops them all), not both")
    if args.db_host and args.db_url:
        raise cli.CommandError("give either --db-url or --db_host/--db_port/..., not both")
    given = ["--" + flag for flag in SEED_FLAGS if getattr(args, flag) is not None]
    if given and not args.db_host:
        raise cli.CommandError("%s given without --db_host (the MySQL/MariaDB server to use)" % ", ".join(given))
    db_url = mysql_url(args) if args.db_host else args.db_url
    settings = cli.settings_from(args, db_url=db_url)
    if args.task_types is not None:
        task_type_files = [os.path.abspath(path) for path in args.task_types]
    else:
        task_type_files = settings.task_type_files
    types = read_registries(task_type_files)  # validate before touching the database
    ensure_database_exists(settings.database_url)
    engine = cli.connect(settings, check_schema=False)
    print("database: %s" % redact_url(settings.database_url))
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
