"""A private single-node Slurm cluster for the tests, started without systemd.

``munged`` (its own key, socket, pid and log under the test directory), ``slurmdbd`` (accounting in a
MariaDB database of its own, so ``sacct`` and ``sacctmgr`` work as on a real cluster), then
``slurmctld -D`` and ``slurmd -D`` in the background with a generated ``slurm.conf`` for this host's name,
cores and memory. Every client command finds the cluster through ``SLURM_CONF`` (see :meth:`env`).

Run ``python tests/slurm_cluster.py DIR`` to start one by hand (Ctrl-C stops it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import psutil
from bench.private_servers import free_port

DAEMONS = ("munged", "mungekey", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr", "scontrol")
CLUSTER_NAME = "eastest"


MYSQL_PLUGIN = "/usr/lib/x86_64-linux-gnu/slurm-wlm/accounting_storage_mysql.so"


def missing_programs() -> list[str]:
    missing = [name for name in DAEMONS if shutil.which(name) is None and not os.path.exists("/usr/sbin/" + name)]
    if not os.path.exists(MYSQL_PLUGIN):
        missing.append("slurm-wlm-mysql-plugin (%s)" % MYSQL_PLUGIN)
    return missing


def _program(name: str) -> str:
    return shutil.which(name) or "/usr/sbin/" + name


class SlurmCluster:
    """One controller and one compute node on this machine, all state under ``root``."""

    def __init__(self, root: str, accounting_db_url: str, accounting_db_name: str):
        self.root = os.path.abspath(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.memory_mb = int(psutil.virtual_memory().total / 2**20 * 0.9)
        self.db_url = accounting_db_url  # mysql host/port/user of the accounting database
        self.db_name = accounting_db_name
        self.processes: list[subprocess.Popen] = []
        self.socket = os.path.join(self.root, "munge", "munge.socket")
        self.conf = os.path.join(self.root, "etc", "slurm.conf")

    # -- configuration ---------------------------------------------------------------------------------
    def _write_configuration(self) -> None:
        for folder in ("munge", "etc", "state", "spool", "log", "run"):
            os.makedirs(os.path.join(self.root, folder), exist_ok=True)
        os.chmod(os.path.join(self.root, "munge"), 0o755)  # munged wants its socket reachable
        from sqlalchemy.engine import make_url

        url = make_url(self.db_url)
        ctld_port, slurmd_port, dbd_port = free_port(), free_port(), free_port()
        auth = "AuthInfo=socket=%s" % self.socket
        path = lambda *parts: os.path.join(self.root, *parts)  # noqa: E731
        dbd = [
            auth, "AuthType=auth/munge", "DbdHost=localhost", "DbdPort=%d" % dbd_port, "SlurmUser=root",
            "LogFile=%s" % path("log", "slurmdbd.log"), "PidFile=%s" % path("run", "slurmdbd.pid"),
            "StorageType=accounting_storage/mysql", "StorageHost=%s" % (url.host or "127.0.0.1"),
            "StoragePort=%d" % (url.port or 3306), "StorageUser=%s" % (url.username or "root"),
            "StorageLoc=%s" % self.db_name, "DebugLevel=info",
        ]
        if url.password:
            dbd.append("StoragePass=%s" % url.password)
        with open(path("etc", "slurmdbd.conf"), "w") as handle:
            handle.write("\n".join(dbd) + "\n")
        os.chmod(path("etc", "slurmdbd.conf"), 0o600)
        conf = [
            "ClusterName=%s" % CLUSTER_NAME, "SlurmctldHost=%s(127.0.0.1)" % self.host,
            "SlurmctldPort=%d" % ctld_port, "SlurmdPort=%d" % slurmd_port, "SlurmUser=root", "SlurmdUser=root",
            auth, "AuthType=auth/munge", "CredType=cred/munge",
            "StateSaveLocation=%s" % path("state"), "SlurmdSpoolDir=%s" % path("spool"),
            "SlurmctldPidFile=%s" % path("run", "slurmctld.pid"), "SlurmdPidFile=%s" % path("run", "slurmd.pid"),
            "SlurmctldLogFile=%s" % path("log", "slurmctld.log"), "SlurmdLogFile=%s" % path("log", "slurmd.log"),
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "ReturnToService=2",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=2", "MaxArraySize=1001",
            "KillWait=5", "MinJobAge=300", "InactiveLimit=0", "Waittime=0", "SlurmctldTimeout=30",
            "SlurmdTimeout=60", "MessageTimeout=20", "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/filetxt", "JobCompLoc=%s" % path("log", "jobcomp.txt"),
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
            "AccountingStoragePort=%d" % dbd_port, "AccountingStoragePass=%s" % self.socket, "SlurmctldDebug=info", "SlurmdDebug=info",
            "NodeName=%s NodeAddr=127.0.0.1 CPUs=%d RealMemory=%d State=UNKNOWN" % (self.host, self.cpus, self.memory_mb),
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        ]
        with open(self.conf, "w") as handle:
            handle.write("\n".join(conf) + "\n")
        with open(path("etc", "cgroup.conf"), "w") as handle:
            handle.write("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")

    @property
    def env(self) -> dict:
        environment = dict(os.environ)
        environment["SLURM_CONF"] = self.conf
        for variable in ("SLURM_MAX_ARRAY_SIZE", "SLURM_MAX_SUBMIT_JOBS", "SLURM_MAX_RUNNING_SIZE"):
            environment.pop(variable, None)
        return environment

    # -- processes -------------------------------------------------------------------------------------
    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.root, "log", name + ".out"), "w")
        process = subprocess.Popen([_program(name), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        process.name = name
        self.processes.append(process)
        return process

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError("%s exited %d: %s" % (" ".join(command), result.returncode,
                                                     (result.stderr or result.stdout).strip()))
        return result

    def _wait(self, what: str, predicate, timeout: float) -> None:
        deadline = time.time() + timeout
        while not predicate():
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError("%s exited %s while waiting for %s; its log:\n%s" % (
                        process.name, process.returncode, what, self.log(process.name)))
            if time.time() > deadline:
                raise RuntimeError("timed out waiting for %s; logs:\n%s" % (what, self.logs()))
            time.sleep(0.5)

    def log(self, name: str) -> str:
        parts = []
        for suffix in (".out", ".log"):
            file_name = os.path.join(self.root, "log", name + suffix)
            if os.path.exists(file_name):
                with open(file_name, errors="replace") as handle:
                    parts.append(handle.read()[-4000:])
        return "\n".join(parts)

    def logs(self) -> str:
        return "\n".join("--- %s\n%s" % (name, self.log(name)) for name in ("munged", "slurmdbd", "slurmctld", "slurmd"))

    def start(self) -> "SlurmCluster":
        self._write_configuration()
        key = os.path.join(self.root, "munge", "munge.key")
        subprocess.run([_program("mungekey"), "--create", "--keyfile", key, "--force"], check=True,
                       capture_output=True)
        os.chmod(key, 0o600)
        self._start("munged", "--foreground", "--force", "--socket", self.socket, "--key-file", key,
                    "--log-file", os.path.join(self.root, "log", "munged.log"),
                    "--pid-file", os.path.join(self.root, "run", "munged.pid"),
                    "--seed-file", os.path.join(self.root, "munge", "munged.seed"))
        self._wait("munged", lambda: os.path.exists(self.socket), 30)
        self._start("slurmdbd", "-D")  # reads slurmdbd.conf beside SLURM_CONF
        self._wait("slurmdbd", lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0, 90)
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME, check=False)
        self._start("slurmctld", "-D", "-i", "-f", self.conf)
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0, 60)
        self._start("slurmd", "-D", "-f", self.conf)
        self._wait("the node to become idle", self._node_idle, 90)
        return self

    def _node_idle(self) -> bool:
        result = self.run("sinfo", "-h", "-o", "%t", check=False)
        return result.returncode == 0 and result.stdout.strip() in ("idle", "mix", "alloc")

    def stop(self) -> None:
        if any(process.poll() is None for process in self.processes):
            self.run("scancel", "--user", "root", check=False, timeout=20)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()


if __name__ == "__main__":
    cluster = SlurmCluster(sys.argv[1], os.environ.get("SLURM_ACCOUNTING_URL", "mysql://root@127.0.0.1:3306"),
                           os.environ.get("SLURM_ACCOUNTING_DB", "slurm_acct_manual")).start()
    print("SLURM_CONF=%s" % cluster.conf, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
