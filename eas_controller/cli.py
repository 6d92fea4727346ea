"""What every command shares: the common flags, settings resolution, connections and clear error exits."""

from __future__ import annotations

import argparse
import logging
import sys
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


def settings_from(args: argparse.Namespace, **overrides) -> Settings:
    values = dict(db_url=getattr(args, "db_url", None), data_dir=getattr(args, "data_dir", None))
    values.update(overrides)
    return load_settings(values, config_path=getattr(args, "config", None))


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
