#!/usr/bin/env python3
"""Many workers against one MariaDB: what polling, heartbeats and claims cost the database server.

Starts a private MariaDB server (its status counters and CPU are then this benchmark's alone; the shared
server also allows only 151 connections, and each worker holds 3-4), a scheduler and N worker processes
(``--concurrency 1 --cpus 1``, default poll interval and lease), and measures three phases:

- idle: no work at all, for a window of seconds;
- busy, long tasks: one ``sleep`` task per worker, all running: heartbeats only, no claims;
- busy, short tasks: a flat chain of ``null`` tasks drained by all the workers: claims and completions.

Each phase reports statements per second (``SHOW GLOBAL STATUS`` deltas: ``Questions``, the statements
clients sent), the server's CPU (psutil on the ``mariadbd`` process) and the workers' CPU, per worker and,
for the short tasks, per task; deadlocks (``Innodb_deadlocks``) and claim latency (an attempt's
``queued_at`` to ``started_at``, p50 and p99: in the short-task phase mostly the wait behind the backlog).
Claim latency itself is probed from this process: it claims tasks of a type the workers do not run
(``error``), one at a time with ``SqlQueue.claim``, while the workers are idle and while they drain the short
tasks, and times each claim. When a phase had deadlocks, the server's ``LATEST DETECTED DEADLOCK`` goes into
the results (``extra``). Every short task must end done with exactly one attempt.
``--shared`` runs against the shared server instead (``EAS_BENCH_MYSQL_URL``; mind its connection limit).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import signal
import subprocess
import tempfile
import time

from bench.common import PROJECT_ROOT, Result, Services, percentile, unavailable_reason

STATUS_VARIABLES = ("Questions", "Com_select", "Com_update", "Com_insert", "Com_delete", "Com_commit", "Com_rollback",
                    "Innodb_deadlocks", "Innodb_row_lock_waits", "Threads_connected")


def global_status(engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SHOW GLOBAL STATUS").all()
    return {name: int(value) for name, value in rows if name in STATUS_VARIABLES and str(value).isdigit()}


class Fleet:
    """A scheduler and ``count`` one-slot workers on ``url``."""

    def __init__(self, url: str, count: int, work_dir: str, lease_seconds: float | None = None,
                 idle_after: float | None = None, scheduler: bool = True):
        from bench.common import fresh_schema

        self.url, self.count = url, count
        self.engine = fresh_schema(url)
        self.data_dir = os.path.join(work_dir, "data")
        self.log_dir = os.path.join(work_dir, "logs")
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.environment = dict(os.environ, EAS_DB_URL=url, EAS_DATA_DIR=self.data_dir, EAS_QUEUE="sql",
                                EAS_CONFIG=os.path.join(self.data_dir, "settings.yaml"), PYTHONUNBUFFERED="1")
        if idle_after is not None:
            self.environment["EAS_IDLE_AFTER_SECONDS"] = str(idle_after)
        self.processes: dict[str, subprocess.Popen] = {}
        if scheduler:
            self.processes["scheduler"] = self._start("scheduler", "schedule_all_waiting_tasks")
        extra = ["--lease-seconds", str(lease_seconds)] if lease_seconds else []
        for number in range(count):
            self.processes["worker %d" % number] = self._start(
                "worker-%d" % number, "worker", "--name", "many-%d" % number, "--concurrency", "1", "--cpus", "1",
                "--task-types", "null,sleep", *extra)
            time.sleep(0.05)  # do not start a hundred interpreters in the same instant on a small machine
        self._wait_for_workers()

    def _start(self, name: str, command: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.log_dir, name + ".log"), "w")
        return subprocess.Popen([sys.executable, "-m", "eas_controller", command, *args], cwd=PROJECT_ROOT,
                                env=self.environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _wait_for_workers(self, timeout: float = 300) -> None:
        import sqlalchemy as sa

        from eas_controller.database.schema import workers

        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            with self.engine.connect() as connection:
                running = connection.execute(sa.select(sa.func.count()).select_from(workers).where(
                    workers.c.state == "running")).scalar()
            if running >= self.count:
                return
            time.sleep(0.5)
        raise RuntimeError("only some of %d workers started within %d s; logs in %s" % (self.count, timeout, self.log_dir))

    def check_alive(self) -> None:
        for label, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError("%s exited with status %s; see %s" % (label, process.returncode, self.log_dir))

    def worker_pids(self) -> list[int]:
        return [process.pid for label, process in self.processes.items() if label.startswith("worker")]

    def submit(self, task_list: list) -> int:
        from eas_controller.submission import submit_chain

        return submit_chain(self.engine, {"job_name": "many-workers", "task_list": task_list}, "bench")[0]

    def job_rows(self, job_id: int) -> list:
        import sqlalchemy as sa

        from eas_controller.database.schema import attempts, tasks

        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(tasks.c.id.label("task_id"), tasks.c.state.label("task_state"), attempts.c.id.label("attempt_id"),
                          attempts.c.state, attempts.c.queued_at, attempts.c.started_at, attempts.c.ended_at)
                .select_from(tasks.outerjoin(attempts, attempts.c.task_id == tasks.c.id))
                .where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False))).all()

    def count_in_state(self, job_id: int, states: tuple) -> int:
        import sqlalchemy as sa

        from eas_controller.database.schema import tasks

        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(tasks).where(
                tasks.c.job_id == job_id, tasks.c.is_control.is_(False), tasks.c.state.in_(states))).scalar()

    def wait(self, job_id: int, count: int, states: tuple, timeout: float) -> None:
        deadline = time.time() + timeout
        while self.count_in_state(job_id, states) < count:
            if time.time() > deadline:
                raise RuntimeError("job %d: not %d tasks %s within %d s; logs in %s" % (
                    job_id, count, "/".join(states), timeout, self.log_dir))
            self.check_alive()
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.engine.dispose()


def latest_deadlock(engine) -> str:
    """The ``LATEST DETECTED DEADLOCK`` section of ``SHOW ENGINE INNODB STATUS`` (empty if none)."""
    with engine.connect() as connection:
        text = connection.exec_driver_sql("SHOW ENGINE INNODB STATUS").first()[2]
    if "LATEST DETECTED DEADLOCK" not in text:
        return ""
    section = text.split("LATEST DETECTED DEADLOCK", 1)[1].split("------------\nTRANSACTIONS", 1)[0]
    return section.strip()[:6000]


class ClaimProbe:
    """Times single claims from this process, of tasks the workers do not run, in a background thread."""

    TASK_TYPE = "error"

    def __init__(self, fleet: Fleet, count: int):
        from bench.queue_claim import register_worker
        from eas_controller.queues.sql import SqlQueue

        self.fleet, self.count = fleet, count
        self.queue = SqlQueue(fleet.engine)
        self.worker = register_worker(fleet.engine, "many-probe")
        self.job = fleet.submit([{"task": self.TASK_TYPE, "message": "probe"}] * count)
        fleet.wait(self.job, count, ("queued",), 120)
        self.timings: list[float] = []

    def start(self, interval: float) -> None:
        import threading

        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self.thread.start()

    def _loop(self, interval: float) -> None:
        from bench.queue_claim import complete

        while not self.halt.wait(interval):
            started = time.perf_counter()
            got = self.queue.claim(self.worker, [self.TASK_TYPE], 1, 60.0)
            if not got:
                return
            self.timings.append((time.perf_counter() - started) * 1000)
            complete(self.fleet.engine, self.worker, got)

    def stop(self) -> list[float]:
        self.halt.set()
        self.thread.join()
        timings, self.timings = self.timings, []
        return timings


class Window:
    """Status counters and CPU (server, workers) over one measured interval."""

    def __init__(self, fleet: Fleet, server_pids: list[int]):
        from bench.cpu import CpuMeter

        self.fleet = fleet
        self.meter = CpuMeter({"server": server_pids, "workers": fleet.worker_pids(),
                               "scheduler": [fleet.processes["scheduler"].pid]})

    def __enter__(self) -> "Window":
        self.status = global_status(self.fleet.engine)
        self.meter.start()
        self.started = time.time()
        return self

    def __exit__(self, *_exc) -> None:
        self.seconds = time.time() - self.started
        self.cpu = self.meter.stop()
        after = global_status(self.fleet.engine)
        self.delta = {name: after[name] - self.status.get(name, 0) for name in after if name != "Threads_connected"}
        self.delta["Questions"] -= 2  # the two SHOW GLOBAL STATUS of this window
        self.connections = after.get("Threads_connected")
        self.deadlock = latest_deadlock(self.fleet.engine) if self.delta.get("Innodb_deadlocks") else ""


def _phase_results(phase: str, window: Window, workers: int, extra: dict | None = None) -> list[Result]:
    per_worker_second = workers * window.seconds
    facts = dict(seconds=round(window.seconds, 1), statements=window.delta, connections=window.connections,
                 cpu_s={label: round(value, 3) for label, value in window.cpu.items()}, **(extra or {}))
    if window.deadlock:
        facts["latest_deadlock"] = window.deadlock
    return [
        Result("many_workers", "%s: statements per worker-second" % phase, "mariadb",
               window.delta["Questions"] / per_worker_second, "stmt/s", processes=workers, extra=facts),
        Result("many_workers", "%s: server CPU per worker" % phase, "mariadb",
               window.cpu["server"] * 1000 / per_worker_second, "ms/s", processes=workers),
        Result("many_workers", "%s: worker CPU per worker" % phase, "mariadb",
               window.cpu["workers"] * 1000 / per_worker_second, "ms/s", processes=workers),
        Result("many_workers", "%s: deadlocks" % phase, "mariadb", float(window.delta.get("Innodb_deadlocks", 0)),
               "deadlocks", processes=workers),
    ]


def _probe_results(phase: str, timings: list[float], workers: int) -> list[Result]:
    return [Result("many_workers", "%s: claim latency p%d (probe, 1 per claim)" % (phase, q), "mariadb",
                   percentile(timings, q / 100), "ms", processes=workers, jobs=len(timings)) for q in (50, 99)]


def measure(url: str, server_pids: list[int], workers: int, idle_s: float, sleep_s: float, short_tasks: int,
            work_dir: str, idle_after: float | None = None, with_scheduler: bool = True) -> list[Result]:
    fleet = Fleet(url, workers, work_dir, idle_after=idle_after)
    results = []
    try:
        probe = ClaimProbe(fleet, 400)
        # past the start-up claims: the idle workers' waits have backed off (with --idle-after, to their longest)
        time.sleep(3 if idle_after is None else idle_after + 30)
        scheduler = fleet.processes["scheduler"]
        if not with_scheduler:  # the workers' own cost alone (nothing to schedule meanwhile)
            scheduler.send_signal(signal.SIGSTOP)
        try:
            with Window(fleet, server_pids) as idle:
                time.sleep(idle_s)
        finally:
            scheduler.send_signal(signal.SIGCONT)
        results += _phase_results("idle", idle, workers, dict(idle_after_s=idle_after, scheduler=with_scheduler))
        probe.start(0.05)
        time.sleep(min(5.0, idle_s))
        results += _probe_results("idle", probe.stop(), workers)

        # long-idle workers (--idle-after) take up to idle_poll_max_s (15 s) to claim: long enough for all to start
        job = fleet.submit([{"task": "sleep", "seconds": sleep_s + 3 + (20 if idle_after is not None else 0)}
                            for _ in range(workers)])
        fleet.wait(job, workers, ("running", "done"), 180)
        if fleet.count_in_state(job, ("done",)):
            raise RuntimeError("the long tasks ended before all %d workers ran one: the machine is too slow" % workers)
        with Window(fleet, server_pids) as busy:
            time.sleep(sleep_s)
        results += _phase_results("busy, one long task per worker", busy, workers)
        fleet.wait(job, workers, ("done",), 120)

        with Window(fleet, server_pids) as short:
            started = time.time()
            job = fleet.submit([{"task": "null"}] * short_tasks)
            probe.start(0.05)
            fleet.wait(job, short_tasks, ("done", "failed", "cancelled"), max(300.0, short_tasks / 5.0))
            probe_timings = probe.stop()
        rows = fleet.job_rows(job)
    finally:
        fleet.stop()
    attempted = [row for row in rows if row.attempt_id is not None]
    problems = []
    if len({row.task_id for row in rows if row.task_state == "done"}) != short_tasks:
        problems.append("not every task done")
    if any(row.state != "succeeded" for row in attempted):
        problems.append("%d attempts did not succeed" % sum(row.state != "succeeded" for row in attempted))
    duplicates = len(attempted) - len({row.task_id for row in attempted})
    elapsed = max(row.ended_at for row in attempted) - started
    claim_ms = [(row.started_at - row.queued_at) * 1000 for row in attempted if row.started_at and row.queued_at]
    results += _phase_results("busy, short tasks", short, workers, dict(tasks=short_tasks, elapsed_s=round(elapsed, 2)))
    results[-4].note = "; ".join(problems)
    results[-4].duplicates = duplicates
    results += [
        Result("many_workers", "busy, short tasks: throughput", "mariadb", short_tasks / elapsed, "tasks/s",
               processes=workers, jobs=short_tasks, duplicates=duplicates, note="; ".join(problems)),
        Result("many_workers", "busy, short tasks: statements per task", "mariadb",
               short.delta["Questions"] / short_tasks, "stmt", processes=workers, jobs=short_tasks),
        Result("many_workers", "busy, short tasks: server CPU per task", "mariadb", short.cpu["server"] * 1000 / short_tasks,
               "ms", processes=workers, jobs=short_tasks),
        Result("many_workers", "busy, short tasks: queued -> running p50", "mariadb", percentile(claim_ms, 0.5), "ms",
               processes=workers, jobs=short_tasks),
        Result("many_workers", "busy, short tasks: queued -> running p99", "mariadb", percentile(claim_ms, 0.99), "ms",
               processes=workers, jobs=short_tasks),
    ] + _probe_results("busy, short tasks", probe_timings, workers)
    return results


def run(services: Services, quick: bool = True, workers: int | None = None, idle_s: float | None = None,
        sleep_s: float | None = None, short_tasks: int | None = None, shared: bool = False,
        idle_after: float | None = None, with_scheduler: bool = True) -> list[Result]:
    """Quick: 50 workers, 15 s idle, 15 s of long tasks, 2,000 short tasks; full: 100 workers, 30 s, 30 s, 10,000."""
    from bench.cpu import server_pids
    from bench.private_servers import PrivateMariaDB

    workers = workers or (50 if quick else 100)
    idle_s = idle_s or (15.0 if quick else 30.0)
    sleep_s = sleep_s or (15.0 if quick else 30.0)
    short_tasks = short_tasks or (2000 if quick else 10000)
    work_dir = tempfile.mkdtemp(prefix="eas_bench_many_")
    server = None if shared else PrivateMariaDB(os.path.join(work_dir, "mariadb"), driver="mysql",
                                                  buffer_pool="256M", max_connections=2000)
    name = "many workers"
    try:
        private = server is not None and not server.missing
        if private:
            server.create()
            url, pids = server.url, [server.process.pid]
        else:
            reason = unavailable_reason(services, "mariadb")
            if reason:
                return [Result.skipped("many_workers", name, "mariadb", reason, processes=workers)]
            url, pids = services.mysql_url, server_pids("mariadb")
        results = measure(url, pids, workers, idle_s, sleep_s, short_tasks, work_dir, idle_after, with_scheduler)
        for result in results:
            result.extra.setdefault("server", "private" if private else "shared")
        return results
    except Exception as error:
        return [Result("many_workers", name, "mariadb", None, "", processes=workers, note="failed: %s" % str(error)[:300])]
    finally:
        if server is not None:
            server.remove()
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)


def main(argv=None) -> int:
    import argparse

    from bench.common import report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 workers, 15 s phases, 2,000 short tasks")
    parser.add_argument("--workers", type=int, help="worker processes (default 50 quick, 100 full)")
    parser.add_argument("--idle-seconds", type=float, help="length of the idle window")
    parser.add_argument("--busy-seconds", type=float, help="length of the long-task window")
    parser.add_argument("--short-tasks", type=int, help="null tasks in the short-task phase")
    parser.add_argument("--shared", action="store_true", help="use the shared server (EAS_BENCH_MYSQL_URL), not a private one")
    parser.add_argument("--idle-after", type=float,
                        help="the workers' idle_after_s (default: theirs, 60): with it, the idle window starts once "
                             "their waits have grown to idle_poll_max_s (30 s after idle_after_s)")
    parser.add_argument("--idle-without-scheduler", action="store_true",
                        help="pause the scheduler (SIGSTOP) during the idle window: the workers' own cost alone")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = run(Services.from_environment(database_suffix="_many_workers"), args.quick, args.workers,
                  args.idle_seconds, args.busy_seconds, args.short_tasks, args.shared, args.idle_after,
                  not args.idle_without_scheduler)
    return report(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
