"""A pool of background workers on this machine: started detached with log files and a pid file, stopped
gracefully (SIGTERM: stop claiming, finish or release running tasks), killed only after a timeout.

Files live under ``<data dir>/pool/``: ``workers.pid`` (one ``pid name log grace`` line per worker) and
``<name>.log``. Before signalling a pid we check it is still one of our workers (pids are reused).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

import psutil

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PoolError(Exception):
    """The pool cannot be started or stopped as asked (the message says why)."""


@dataclasses.dataclass
class Member:
    pid: int
    name: str
    log: str
    grace_s: float


@dataclasses.dataclass
class StopReport:
    lines: list[str] = dataclasses.field(default_factory=list)
    stopped: int = 0
    killed: int = 0


def pool_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "pool")


def pid_file(data_dir: str) -> str:
    return os.path.join(pool_dir(data_dir), "workers.pid")


def read_members(data_dir: str) -> list[Member]:
    path = pid_file(data_dir)
    if not os.path.exists(path):
        return []
    members = []
    with open(path) as handle:
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4 and parts[0].isdigit():
                members.append(Member(int(parts[0]), parts[1], parts[2], float(parts[3])))
    return members


def _ours(member: Member) -> psutil.Process | None:
    """The process if it is still this worker (not a zombie, not a reused pid)."""
    try:
        process = psutil.Process(member.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return process if "eas_controller" in command and member.name in command else None


def live_members(data_dir: str) -> list[Member]:
    return [member for member in read_members(data_dir) if _ours(member)]


def start_pool(data_dir: str, count: int, worker_args: list[str], grace_s: float, env: dict | None = None,
               prefix: str | None = None) -> list[Member]:
    """Start ``count`` detached workers; they outlive this process and are found again by the pid file."""
    if count < 1:
        raise PoolError("--count must be at least 1")
    running = live_members(data_dir)
    if running:
        raise PoolError("a local pool is already running (pids %s); stop it first with stop.py --local"
                        % ", ".join(str(member.pid) for member in running))
    os.makedirs(pool_dir(data_dir), exist_ok=True)
    prefix = prefix or "%s-pool" % socket.gethostname().split(".")[0]
    members = []
    for index in range(count):
        name = "%s-%d" % (prefix, index)
        log = os.path.join(pool_dir(data_dir), name + ".log")
        with open(log, "a") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "eas_controller", "worker", "--name", name, "--grace-period", "%g" % grace_s,
                 *worker_args], cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        members.append(Member(process.pid, name, log, grace_s))
    with open(pid_file(data_dir), "w") as handle:
        for member in members:
            handle.write("%d\t%s\t%s\t%g\n" % (member.pid, member.name, member.log, member.grace_s))
    return members


def _wait_gone(process: psutil.Process, deadline: float) -> bool:
    """Wait until the process ended (a zombie left for its parent to reap counts as ended)."""
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.1)


def stop_pool(data_dir: str, timeout: float | None = None) -> StopReport:
    """SIGTERM every live member, wait for each (its grace period + 30 s unless told), kill what is left."""
    members = read_members(data_dir)
    if not members:
        raise PoolError("no local pool to stop: %s does not exist" % pid_file(data_dir))
    report = StopReport()
    processes = {}
    for member in members:
        process = _ours(member)
        if process is None:
            report.lines.append("worker %s (pid %d) was not running" % (member.name, member.pid))
            continue
        process.send_signal(signal.SIGTERM)
        processes[member.pid] = (member, process)
    wait = max((timeout if timeout is not None else member.grace_s + 30) for member, _ in processes.values()) \
        if processes else 0
    deadline = time.time() + wait
    started = time.time()
    for member, process in processes.values():
        if _wait_gone(process, deadline):
            report.stopped += 1
            report.lines.append("worker %s (pid %d) stopped after %.1f s (log: %s)" % (
                member.name, member.pid, time.time() - started, member.log))
        else:
            process.kill()
            report.killed += 1
            report.lines.append("worker %s (pid %d) did not stop within %g s: killed (its running tasks will be "
                                "retried when their lease expires)" % (member.name, member.pid, wait))
    os.remove(pid_file(data_dir))
    report.lines.append("local pool stopped: %d worker(s) stopped gracefully, %d killed" % (report.stopped, report.killed))
    return report
