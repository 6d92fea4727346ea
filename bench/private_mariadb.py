"""A throw-away MariaDB server of a benchmark's own, so its status counters and CPU are the benchmark's alone.

On a shared server ``SHOW GLOBAL STATUS`` and the server's CPU include everyone else's work; a private
server (``mariadb-install-db`` + ``mariadbd`` in a temporary folder, a free port, no grant tables) does
not. Same settings as the shared one where they matter: InnoDB, binary log off.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time

_SBIN = "/usr/sbin:/usr/bin:/usr/local/sbin"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateMariaDB:
    def __init__(self, folder: str, buffer_pool: str = "256M"):
        self.install = shutil.which("mariadb-install-db", path=_SBIN + ":" + os.environ.get("PATH", "")) or \
            shutil.which("mysql_install_db", path=_SBIN + ":" + os.environ.get("PATH", ""))
        self.server = shutil.which("mariadbd", path=_SBIN) or shutil.which("mysqld", path=_SBIN)
        self.folder = folder
        self.datadir = os.path.join(folder, "data")
        self.port = _free_port()
        self.buffer_pool = buffer_pool
        self.process: subprocess.Popen | None = None

    @property
    def available(self) -> bool:
        return bool(self.install and self.server)

    def url(self, database: str = "eas_bench") -> str:
        return "mysql://root@127.0.0.1:%d/%s" % (self.port, database)

    def start(self, timeout: float = 120) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        os.makedirs(self.folder, exist_ok=True)
        subprocess.run([self.install, "--no-defaults", "--datadir=" + self.datadir, "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--user=" + user], check=True, capture_output=True, timeout=timeout)
        log = open(os.path.join(self.folder, "server.log"), "a")
        self.process = subprocess.Popen(
            [self.server, "--no-defaults", "--datadir=" + self.datadir, "--port=%d" % self.port,
             "--socket=" + os.path.join(self.folder, "s"), "--bind-address=127.0.0.1", "--user=" + user,
             "--skip-grant-tables", "--innodb-buffer-pool-size=" + self.buffer_pool, "--skip-log-bin",
             "--max-connections=2000", "--pid-file=" + os.path.join(self.folder, "pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the private MariaDB server exited; see %s/server.log" % self.folder)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the private MariaDB server did not answer within %d s" % timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
