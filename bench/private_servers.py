"""Throw-away MariaDB and RabbitMQ servers that a benchmark may kill and restart at will.

Each lives in a temporary folder with its own data directory, port and (RabbitMQ) node name, so breaking
it never touches the machine's shared servers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SBIN = "/usr/sbin:/usr/bin:/usr/local/sbin:/usr/lib/rabbitmq/bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %g s waiting for %s" % (timeout, what))
        time.sleep(interval)


class PrivateMariaDB:
    """A MariaDB server of our own: ``create()`` once, then ``kill()`` (SIGKILL, as a crash) and ``start()``.

    ``driver`` is the URL's scheme (``mysql://`` picks mysqlclient when it imports); ``buffer_pool`` and
    ``max_connections`` size it for the benchmark or test at hand."""

    def __init__(self, folder: str | None = None, driver: str = "mysql+pymysql", buffer_pool: str = "128M",
                 max_connections: int = 500):
        path = SBIN + ":" + os.environ.get("PATH", "")
        self.install = shutil.which("mariadb-install-db", path=path) or shutil.which("mysql_install_db", path=path)
        self.server = shutil.which("mariadbd", path=SBIN) or shutil.which("mysqld", path=SBIN)
        self.folder = None if folder is None else str(folder)
        self.port = free_port()
        self.driver = driver
        self.buffer_pool = buffer_pool
        self.max_connections = max_connections
        self.process: subprocess.Popen | None = None

    @property
    def missing(self) -> str | None:
        if not (self.install and self.server):
            return "MariaDB server binaries (mariadb-install-db, mariadbd) are not installed"
        return None

    def url_of(self, database: str = "eas") -> str:
        return "%s://root@127.0.0.1:%d/%s" % (self.driver, self.port, database)

    @property
    def url(self) -> str:
        return self.url_of("eas")

    def create(self) -> None:
        self.folder = self.folder or tempfile.mkdtemp(prefix="eas_chaos_mariadb_")
        os.makedirs(self.folder, exist_ok=True)
        subprocess.run([self.install, "--no-defaults", "--datadir=" + self.datadir,
                        "--auth-root-authentication-method=normal", "--skip-test-db", "--user=" + _user()],
                       check=True, capture_output=True, timeout=180)
        self.start()
        import sqlalchemy as sa

        engine = sa.create_engine("mysql+pymysql://root@127.0.0.1:%d/" % self.port)
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE DATABASE eas CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        engine.dispose()

    @property
    def datadir(self) -> str:
        return os.path.join(self.folder, "data")

    def start(self) -> None:
        log = open(os.path.join(self.folder, "server.log"), "a")
        self.process = subprocess.Popen(
            [self.server, "--no-defaults", "--datadir=" + self.datadir, "--port=%d" % self.port,
             "--socket=" + os.path.join(self.folder, "s"), "--bind-address=127.0.0.1", "--user=" + _user(),
             "--skip-grant-tables", "--innodb-buffer-pool-size=" + self.buffer_pool, "--skip-log-bin",
             "--max-connections=%d" % self.max_connections,
             "--pid-file=" + os.path.join(self.folder, "pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        _wait(self._answers, 120, "the private MariaDB server to accept connections")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("the private MariaDB server exited; see %s/server.log" % self.folder)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def remove(self) -> None:
        self.kill()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRabbitMQ:
    """A RabbitMQ node of our own (name, ports, data folder); ``restart()`` stops and starts it."""

    def __init__(self):
        self.server = shutil.which("rabbitmq-server", path=SBIN)
        self.control = shutil.which("rabbitmqctl", path=SBIN)
        self.folder: str | None = None
        self.port = free_port()
        self.dist_port = free_port()
        self.node = "eas_chaos_%d@localhost" % self.port

    @property
    def missing(self) -> str | None:
        if not (self.server and self.control):
            return "RabbitMQ server scripts (rabbitmq-server, rabbitmqctl) are not installed"
        return None

    @property
    def url(self) -> str:
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % self.port

    @property
    def environment(self) -> dict:
        return dict(os.environ, RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(self.port),
                    RABBITMQ_DIST_PORT=str(self.dist_port), RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                    RABBITMQ_MNESIA_BASE=os.path.join(self.folder, "mnesia"),
                    RABBITMQ_LOG_BASE=os.path.join(self.folder, "log"),
                    RABBITMQ_PID_FILE=os.path.join(self.folder, "pid"),
                    RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.folder, "enabled_plugins"),
                    RABBITMQ_CONFIG_FILE=os.path.join(self.folder, "rabbitmq"),  # none: the machine's is not ours
                    RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(self.folder, "advanced.config"))

    def create(self) -> None:
        # not under a private temporary folder: the node may run as user rabbitmq
        self.folder = tempfile.mkdtemp(prefix="eas_chaos_rabbitmq_")
        with open(os.path.join(self.folder, "enabled_plugins"), "w") as handle:
            handle.write("[].\n")
        if os.getuid() == 0:  # the server scripts switch to the rabbitmq user when started by root
            try:
                account = pwd.getpwnam("rabbitmq")
            except KeyError:
                account = None
            if account is not None:
                for root, folders, files in os.walk(self.folder):
                    for name in [root] + [os.path.join(root, item) for item in folders + files]:
                        os.chown(name, account.pw_uid, account.pw_gid)
        self.start()

    def start(self) -> None:
        subprocess.run([self.server, "-detached"], env=self.environment, check=True, capture_output=True, timeout=60)
        _wait(self._answers, 180, "the private RabbitMQ node to accept connections", interval=0.5)

    def stop(self) -> None:
        subprocess.run([self.control, "-n", self.node, "stop"], env=self.environment, capture_output=True, timeout=120)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _answers(self) -> bool:
        import pika

        try:
            parameters = pika.URLParameters(self.url)
            parameters.socket_timeout = 2
            parameters.connection_attempts = 1
            pika.BlockingConnection(parameters).close()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def remove(self) -> None:
        if self.folder is None:
            return
        self.stop()
        try:
            with open(os.path.join(self.folder, "pid")) as handle:
                os.kill(int(handle.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name
