"""Configuration, resolved once: command-line flag > environment > settings file > built-in defaults.

The resolved :class:`Settings` object is passed down to everything else, so tests can build one in memory.
``init_schema.py`` and ``init_queues.py`` record the connection in the settings file; later scripts then
need no flags. Passwords are kept in the file (mode 0600) but never printed: use :func:`redact_url`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import yaml

from eas_controller.launch import PROJECT_ROOT

#: ``data/`` of a source checkout; for an installed package (``pip install``), the user's data folder.
DEFAULT_DATA_DIR = (
    os.path.join(PROJECT_ROOT, "data") if os.path.exists(os.path.join(PROJECT_ROOT, "setup.sh"))
    else os.path.join(os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "eas")
)

#: setting name -> environment variable that overrides the settings file
ENVIRONMENT_VARIABLES = {
    "db_url": "EAS_DB_URL",
    "queue": "EAS_QUEUE",
    "amqp_url": "EAS_AMQP_URL",
    "amqp_queue_prefix": "EAS_AMQP_QUEUE_PREFIX",
    "data_dir": "EAS_DATA_DIR",
    "lease_seconds": "EAS_LEASE_SECONDS",
    "max_attempts": "EAS_MAX_ATTEMPTS",
    "max_lost_attempts": "EAS_MAX_LOST_ATTEMPTS",
    "retry_backoff_s": "EAS_RETRY_BACKOFF_SECONDS",
    "scheduler_interval": "EAS_SCHEDULER_INTERVAL",
    "idle_after_s": "EAS_IDLE_AFTER_SECONDS",
    "idle_poll_max_s": "EAS_IDLE_POLL_MAX_SECONDS",
    "queue_notifications": "EAS_QUEUE_NOTIFICATIONS",
    "s3_endpoint_url": "EAS_S3_ENDPOINT_URL",
}

QUEUE_IMPLEMENTATIONS = ("sql", "amqp")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and where it came from."""


@dataclasses.dataclass
class Settings:
    """Everything a script needs to reach the database, the queue and the data directory."""

    data_dir: str = DEFAULT_DATA_DIR
    db_url: str | None = None  # None: SQLite file under data_dir
    queue: str = "sql"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    amqp_queue_prefix: str = "eas."  # RabbitMQ queue names: prefix + task type
    lease_seconds: float = 60.0
    max_attempts: int = 1  # attempts a task may fail of its own accord (exit status, exception, timeout)
    max_lost_attempts: int = 3  # attempts a task may lose with its worker (lease expired) before it fails
    retry_backoff_s: float = 5.0  # wait before the 2nd attempt of a task; doubles for each further one
    scheduler_interval: float = 0.25
    #: a worker that claimed nothing for idle_after_s polls less and less often, up to every idle_poll_max_s
    #: (on PostgreSQL a notification wakes it at once when work is queued)
    idle_after_s: float = 60.0
    idle_poll_max_s: float = 15.0
    #: PostgreSQL: idle workers LISTEN for the NOTIFY sent when work is queued (off: a pooler in transaction mode)
    queue_notifications: bool = True
    task_type_files: list[str] = dataclasses.field(default_factory=list)
    api_tokens: list[str] = dataclasses.field(default_factory=list)  # bearer tokens the REST API accepts for writes
    #: the S3 service of s3:// URIs (an S3-compatible store); None: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS
    s3_endpoint_url: str | None = None
    settings_path: str | None = None  # where these settings were read from / will be saved

    @property
    def database_url(self) -> str:
        return self.db_url or "sqlite:///" + os.path.join(self.data_dir, "eas.sqlite")


def default_settings_path(environ: Mapping[str, str]) -> str:
    if environ.get("EAS_CONFIG"):
        return environ["EAS_CONFIG"]
    data_dir = environ.get("EAS_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.join(data_dir, "settings.yaml")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _coerce(name: str, value: Any, source: str) -> Any:
    field_types = {"lease_seconds": float, "max_attempts": int, "max_lost_attempts": int, "scheduler_interval": float,
                   "retry_backoff_s": float, "idle_after_s": float, "idle_poll_max_s": float,
                   "queue_notifications": _boolean}
    try:
        value = field_types.get(name, lambda v: v)(value)
    except (TypeError, ValueError):
        raise ConfigError("%s: setting %r has an invalid value %r" % (source, name, value)) from None
    if name == "queue" and value not in QUEUE_IMPLEMENTATIONS:
        raise ConfigError("%s: queue must be one of %s, not %r" % (source, ", ".join(QUEUE_IMPLEMENTATIONS), value))
    if name == "amqp_queue_prefix" and (not isinstance(value, str) or value.startswith("amq.") or len(value) > 100):
        raise ConfigError("%s: amqp_queue_prefix must be a string of at most 100 characters not starting with "
                          "'amq.' (reserved by RabbitMQ), not %r" % (source, value))
    if name == "task_type_files" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError("%s: task_type_files must be a list of file paths" % source)
    if name == "api_tokens" and not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
        raise ConfigError("%s: api_tokens must be a list of non-empty strings" % source)
    if name == "s3_endpoint_url" and value is not None and not (
            isinstance(value, str) and value.startswith(("http://", "https://")) and "@" not in value):
        raise ConfigError("%s: s3_endpoint_url must be an http:// or https:// URL without credentials, not %r"
                          % (source, redact_url(str(value))))
    if name in ("lease_seconds", "scheduler_interval", "max_attempts", "max_lost_attempts") and value <= 0:
        raise ConfigError("%s: setting %r must be positive, not %r" % (source, name, value))
    if name in ("retry_backoff_s", "idle_after_s", "idle_poll_max_s") and value < 0:
        raise ConfigError("%s: setting %r must not be negative, not %r" % (source, name, value))
    return value


def read_settings_file(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as handle:
            content = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError("settings file %s is not valid YAML: %s" % (path, error)) from None
    if not isinstance(content, dict):
        raise ConfigError("settings file %s must hold a mapping of setting names to values" % path)
    known = {field.name for field in dataclasses.fields(Settings)} - {"settings_path"}
    unknown = sorted(set(content) - known)
    if unknown:
        raise ConfigError("settings file %s: unknown setting(s) %s; known: %s" % (path, unknown, sorted(known)))
    return content


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: ``overrides`` (flags that were given) > environment > settings file > defaults."""
    environ = os.environ if environ is None else environ
    path = config_path or default_settings_path(environ)
    settings = Settings(settings_path=path)
    for name, value in read_settings_file(path).items():
        setattr(settings, name, _coerce(name, value, path))
    for name, variable in ENVIRONMENT_VARIABLES.items():
        if environ.get(variable):
            setattr(settings, name, _coerce(name, environ[variable], "environment variable " + variable))
    for name, value in (overrides or {}).items():
        if value is not None:
            setattr(settings, name, _coerce(name, value, "command line"))
    settings.data_dir = os.path.abspath(settings.data_dir)
    return settings


def save_settings(settings: Settings, **changes: Any) -> str:
    """Record ``changes`` in the settings file (keeping what else it holds) and return its path."""
    path = settings.settings_path or default_settings_path(os.environ)
    content = read_settings_file(path)
    for name, value in changes.items():
        if value is None:
            content.pop(name, None)
        else:
            content[name] = _coerce(name, value, "settings")
        setattr(settings, name, value)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("# EAS Controller settings (flags and EAS_* environment variables override these).\n")
        yaml.safe_dump(content, handle, default_flow_style=False, sort_keys=True)
    return path


def redact_url(url: str) -> str:
    """A connection URL (or a message holding one) that is safe to print: the password replaced by ``***``.

    Works on the text, not on a parsed URL, so a password holding an unescaped ``@`` or ``/`` is hidden whole
    (the last ``@`` ends the credentials); hiding too much is harmless, showing a piece of a password is not.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user, colon, _password = credentials.partition(":")
    return "%s://%s%s@%s" % (scheme, user, ":***" if colon else "", location)
