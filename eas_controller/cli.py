"""What every command shares: the common flags, settings resolution, connections and clear error exits."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import urllib.parse
from typing import Callable

from eas_controller.config import ConfigError, Settings, load_settings

EXIT_ERROR = 2


class CommandError(Exception):
    """An error to print as one clear line (no traceback) before exiting with status 2."""


def parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = result.add_argument_group("connection (default: the settings file, see docs/configuration.md)")
    group.add_argument("--db-url", help="SQLAlchemy database URL for this run, e.g. mysql://user:pw@host/db "
                                        "(environment: EAS_DB_URL)")
    group.add_argument("--config", metavar="FILE", help="settings file to read instead of the default "
                                                        "(environment: EAS_CONFIG)")
    group.add_argument("--data-dir", help="data directory: products, scratch, default SQLite file (EAS_DATA_DIR)")
    return result


SEED_DATABASE_FLAGS = ("db_engine", "db_host", "db_port", "db_user", "db_passwd", "db_name")
SEED_BROKER_FLAGS = ("mq_host", "mq_port", "mq_user", "mq_passwd", "mq_vhost")


def _add_server_flags(group, prefix: str, what: str, defaults: dict) -> None:
    """``--<prefix>_host``, ``_port``, ``_user`` and ``_passwd``, as the seed spells them."""
    for field in ("host", "port", "user", "passwd"):
        label = "password" if field == "passwd" else field
        note = "; never printed" if field == "passwd" else ""
        group.add_argument("--%s_%s" % (prefix, field), type=int if field == "port" else str,
                           help="%s %s (default %s%s)" % (what, label, defaults[field], note))


def add_seed_database_flags(result: argparse.ArgumentParser) -> None:
    """The seed's database flags; any of them given builds the URL (see :func:`seed_database_url`)."""
    group = result.add_argument_group("database as the seed's flags name it (alternative to --db-url; a flag "
                                      "left out takes its default)")
    group.add_argument("--db_engine", choices=("mysql", "sqlite3"),
                       help="mysql (MariaDB/MySQL server, the default) or sqlite3 (the file "
                            "<data dir>/<db_name>.sqlite; host, port, user and password are not used)")
    _add_server_flags(group, "db", "database", dict(host="localhost", port="3306", user="root", passwd="none"))
    group.add_argument("--db_name", help="database name (default eas)")


def add_seed_broker_flags(result: argparse.ArgumentParser) -> None:
    """The seed's queue flags; any broker flag given builds the RabbitMQ URL and selects the AMQP queue."""
    result.add_argument("--queue_implementation", "--queue-implementation", dest="queue_implementation",
                        choices=("sql", "amqp"),
                        help="sql or amqp (default: amqp when a broker flag is given, else the configured queue)")
    group = result.add_argument_group("RabbitMQ as the seed's flags name it (alternative to --amqp-url; a flag "
                                      "left out takes its default)")
    _add_server_flags(group, "mq", "broker", dict(host="localhost", port="5672", user="guest", passwd="guest"))
    group.add_argument("--mq_vhost", help="virtual host (default /)")


def _given(args: argparse.Namespace, flags) -> list[str]:
    return ["--" + flag for flag in flags if getattr(args, flag, None) is not None]


def seed_database_url(args: argparse.Namespace, data_dir: str) -> str | None:
    """The URL the seed's database flags name, or None when none was given.

    As in the seed, a flag left out takes its default (host localhost, port 3306, user root, database eas),
    so ``--db_user eas`` alone means the server on this machine. ``--db_engine sqlite3`` names the file
    ``<data_dir>/<db_name>.sqlite`` (``eas.sqlite``, the built-in default, when no name is given)."""
    given = _given(args, SEED_DATABASE_FLAGS)
    if not given:
        return None
    if getattr(args, "db_url", None):
        raise CommandError("give either --db-url or %s, not both" % ", ".join(given))
    name = args.db_name or "eas"
    if args.db_engine == "sqlite3":
        if not name or "/" in name or name in (".", ".."):
            raise CommandError("--db_name %r cannot name an SQLite file (no '/' allowed)" % name)
        return "sqlite:///" + os.path.join(data_dir, name + ".sqlite")
    password = ":" + urllib.parse.quote(args.db_passwd, safe="") if args.db_passwd else ""
    return "mysql+pymysql://%s%s@%s:%d/%s" % (urllib.parse.quote(args.db_user or "root", safe=""), password,
                                              args.db_host or "localhost", args.db_port or 3306, name)


def seed_database_notes(args: argparse.Namespace) -> list[str]:
    """Seed flags that the chosen engine does not use (the seed ignored them silently; we say so)."""
    if getattr(args, "db_engine", None) != "sqlite3":
        return []
    unused = _given(args, ("db_host", "db_port", "db_user", "db_passwd"))
    return ["%s not used by --db_engine sqlite3" % ", ".join(unused)] if unused else []


def seed_amqp_url(args: argparse.Namespace) -> str | None:
    """The RabbitMQ URL the seed's broker flags name, or None when none was given (host defaults to localhost)."""
    given = _given(args, SEED_BROKER_FLAGS)
    if not given:
        return None
    if getattr(args, "amqp_url", None):
        raise CommandError("give either --amqp-url or %s, not both" % ", ".join(given))
    quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    return "amqp://%s:%s@%s:%d/%s" % (quote(args.mq_user or "guest"), quote(args.mq_passwd or "guest"),
                                      args.mq_host or "localhost", args.mq_port or 5672, quote(args.mq_vhost or "/"))


def settings_from(args: argparse.Namespace, **overrides) -> Settings:
    """Settings for this run: the flags given (seed flags included) over environment, settings file, defaults."""
    values = dict(db_url=getattr(args, "db_url", None), data_dir=getattr(args, "data_dir", None))
    values.update(overrides)
    amqp_url = seed_amqp_url(args)
    if amqp_url and values.get("amqp_url") is None:
        values["amqp_url"] = amqp_url
    if hasattr(args, "queue_implementation") and values.get("queue") is None:
        values["queue"] = args.queue_implementation or ("amqp" if amqp_url or getattr(args, "amqp_url", None)
                                                        else None)
    settings = load_settings(values, config_path=getattr(args, "config", None))
    db_url = seed_database_url(args, settings.data_dir)
    if db_url and overrides.get("db_url") is None:
        settings.db_url = db_url
    return settings


def connect(settings: Settings, check_schema: bool = True):
    """An engine on the configured database, checked for a schema unless told otherwise."""
    from eas_controller.database.engine import make_engine
    from eas_controller.database.manage import require_schema

    engine = make_engine(settings.database_url)
    if check_schema:
        require_schema(engine)
    return engine


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def one_line_errors(*kinds: type[BaseException]):
    """Errors of these kinds, raised inside the block, end the command as one line (a :class:`CommandError`)."""
    try:
        yield
    except kinds as error:
        raise CommandError(str(error)) from None


def command(build_parser: Callable[[], argparse.ArgumentParser], action: Callable[[argparse.Namespace], int | None]):
    """A command's ``main(argv)``: parse ``argv`` with ``build_parser()``, then :func:`run` ``action(args)``."""

    def main(argv: list[str]) -> int:
        args = build_parser().parse_args(argv)
        return run(lambda: action(args))

    main.__doc__ = action.__doc__
    return main


def run(main: Callable[[], int | None]) -> int:
    """Call ``main``; expected failures become one line on stderr and exit status 2."""
    from sqlalchemy.exc import OperationalError

    from eas_controller.chains import ChainError
    from eas_controller.database.engine import DatabaseError
    from eas_controller.registry import RegistryError

    try:
        return main() or 0
    except (CommandError, ConfigError, ChainError, DatabaseError, RegistryError) as error:
        print("error: %s" % error, file=sys.stderr)
        return EXIT_ERROR
    except OperationalError as error:
        from eas_controller.config import redact_url

        print("error: cannot use the database: %s" % redact_url(str(error.orig).splitlines()[0]), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as other Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        return 128 + signal.SIGPIPE


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` / ``--metrics-address`` of the long-running roles (docs/metrics.md)."""
    group = parser.add_argument_group("metrics (docs/metrics.md)")
    group.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                       help="serve Prometheus metrics over HTTP on this port (default: no endpoint)")
    group.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDRESS",
                       help="address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 for every interface)")


def serve_metrics(args: argparse.Namespace, role: str, engine, database_counts: bool = False,
                  lease_seconds: float = 60.0):
    """Start the metrics endpoint if ``--metrics-port`` was given; a bad or taken port is one clear error."""
    if getattr(args, "metrics_port", None) is None:
        return None
    from eas_controller import metrics

    if not 0 < args.metrics_port < 65536:
        raise CommandError("--metrics-port must be between 1 and 65535")
    try:
        return metrics.serve(args.metrics_port, args.metrics_address, role, engine, database_counts, lease_seconds)
    except OSError as error:
        raise CommandError("cannot serve metrics on %s:%d: %s" % (args.metrics_address, args.metrics_port,
                                                                   error.strerror or error)) from None


def read_view(args: argparse.Namespace, body: Callable):
    """Run ``body(connection, settings)`` in one read-only transaction on the configured database; a job or
    task that does not exist becomes a :class:`CommandError`."""
    from eas_controller.database.engine import read_transaction
    from eas_controller.views import NotFound

    settings = settings_from(args)
    engine = connect(settings)
    try:
        with read_transaction(engine) as connection:
            return body(connection, settings)
    except NotFound as error:
        raise CommandError(str(error)) from None
    finally:
        engine.dispose()


def add_format_argument(parser: argparse.ArgumentParser, default: str = "table") -> None:
    parser.add_argument("--format", choices=("table", "json", "csv"), default=default,
                        help="output format (default: %s)" % default)


def open_selection(args: argparse.Namespace):
    """For the recovery commands: settings, engine and the checked task selection (--job-name, --task-type...)."""
    from eas_controller import recovery

    settings = settings_from(args)
    engine = connect(settings)
    selection = recovery.selection_from(args)
    try:
        recovery.check_task_types(engine, selection.task_types)
    except ValueError as error:
        raise CommandError(str(error)) from None
    return settings, engine, selection
