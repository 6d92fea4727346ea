"""db_shell.py: an interactive SQL shell (sqlite3, mariadb or psql) on the configured database.

The password goes to the client through its environment (MYSQL_PWD, PGPASSWORD), never on the command line
or the screen. Arguments after `--` are passed to the client."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./db_shell.py
  ./db_shell.py --print-command
  ./db_shell.py -- -e "SELECT state, COUNT(*) FROM eas_tasks GROUP BY state"    (MariaDB)"""

CLIENTS = {"sqlite": ("sqlite3",), "mysql": ("mariadb", "mysql"), "mariadb": ("mariadb", "mysql"),
           "postgresql": ("psql",)}


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--print-command", action="store_true",
                        help="print the client command line (without the password) instead of running it")
    parser.add_argument("client_args", nargs="*", metavar="-- ARGS", help="extra arguments for the client")
    return parser


def client_command(url_text: str) -> tuple[list[str], dict[str, str]]:
    """The client's argument list and the environment variables that carry the password."""
    import shutil

    from sqlalchemy.engine import make_url

    url = make_url(url_text)
    backend = url.get_backend_name()
    names = CLIENTS.get(backend)
    if names is None:
        raise cli.CommandError("no SQL shell known for database type %r" % backend)
    program = next((name for name in names if shutil.which(name)), None)
    if program is None:
        raise cli.CommandError("the %s client (%s) is not installed" % (backend, " or ".join(names)))
    if backend == "sqlite":
        return [program, url.database or ":memory:"], {}
    environment = {}
    if backend == "postgresql":
        command = [program, "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres",
                   url.database or "postgres"]
        if url.password:
            environment["PGPASSWORD"] = url.password
        return command, environment
    command = [program, "--protocol=tcp", "-h", url.host or "127.0.0.1", "-P", str(url.port or 3306),
               "-u", url.username or "root"]
    if url.database:
        command.append(url.database)
    if url.password:
        environment["MYSQL_PWD"] = url.password
    return command, environment


def shell(args) -> int:
    import os
    import shlex

    settings = cli.settings_from(args)
    command, environment = client_command(settings.database_url)
    command += args.client_args
    if args.print_command:
        print(shlex.join(command))
        return 0
    os.execvpe(command[0], command, dict(os.environ, **environment))
    return 0


main = cli.command(build_parser, shell)
