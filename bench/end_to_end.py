#!/usr/bin/env python3
"""End to end: ``null`` tasks through submit -> scheduler -> 2 workers -> done, with real processes.

The scheduler daemon (``python -m eas_controller schedule_all_waiting_tasks``) and two workers
(``python -m eas_controller worker --concurrency 1``) start first and sit idle; the clock starts when
the chain of N independent ``null`` tasks is submitted and stops at the last attempt's ``ended_at``.

- throughput = N / (last ended_at - submit start)
- controller overhead per task = elapsed * slots / N - mean attempt wall_s: the slot time each task cost
  beyond running its implementation (claim, files, child round trip, completion, waiting for work)
- ready-to-running latency, from a separate linear chain (each task ``requires_metadata_from`` the one
  before, so it becomes ready exactly when its predecessor's completion commits): per link,
  ``started_at(i) - ended_at(i-1)``, split into ready -> queued (the scheduler: ``queued_at(i) -
  ended_at(i-1)``) and queued -> running (the claim: ``started_at(i) - queued_at(i)``). A flat chain
  would only measure the backlog.
- peak memory: the RSS of each worker (and, separately, of its task children) and of the scheduler,
  sampled every 0.25 s with psutil.
Every task must end ``done`` with exactly one attempt (no duplicate execution).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import signal
import statistics
import subprocess
import threading
import time

from bench.common import BACKENDS, PROJECT_ROOT, Result, Services, percentile, unavailable_reason


class MemorySampler(threading.Thread):
    """Peak RSS (MiB) of each watched process and of its descendants, sampled in the background."""

    def __init__(self, processes: dict[str, int], interval: float = 0.25):
        super().__init__(daemon=True)
        self.pids = processes
        self.interval = interval
        self.peaks: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        self.sample()  # at once, and again at the end: a short run may be over before the first interval
        while not self.halt.wait(self.interval):
            self.sample()
        self.sample()

    def sample(self) -> None:
        import psutil

        for label, pid in self.pids.items():
            try:
                process = psutil.Process(pid)
                own = process.memory_info().rss
                children = sum(child.memory_info().rss for child in process.children(recursive=True))
            except psutil.Error:
                continue
            self.peaks[label] = max(self.peaks.get(label, 0.0), own / 2**20)
            self.peaks[label + " children"] = max(self.peaks.get(label + " children", 0.0), children / 2**20)

    def stop(self) -> dict[str, float]:
        self.halt.set()
        self.join()
        return {label: round(value, 1) for label, value in self.peaks.items()}


class Controller:
    """A fresh database, a scheduler daemon and N worker processes, as a user would run them."""

    def __init__(self, services: Services, backend: str, workers: int = 2, queue: str = "sql", tag: str = "e2e",
                 slots: int = 1):
        from bench.common import fresh_schema

        self.backend = backend
        self.url = services.sqlalchemy_url(backend, tag)
        self.engine = fresh_schema(self.url)
        self.data_dir = os.path.join(services.work_dir, "%s-%s-data" % (tag, backend))
        os.makedirs(self.data_dir, exist_ok=True)
        self.environment = dict(os.environ, EAS_DB_URL=self.url, EAS_DATA_DIR=self.data_dir, EAS_QUEUE=queue,
                                EAS_AMQP_URL=services.amqp_url,
                                EAS_CONFIG=os.path.join(self.data_dir, "settings.yaml"), PYTHONUNBUFFERED="1",
                                EAS_AMQP_QUEUE_PREFIX=services.amqp_prefix)
        self.log_dir = os.path.join(services.work_dir, "%s-%s-logs" % (tag, backend))
        os.makedirs(self.log_dir, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.processes["scheduler"] = self._start("scheduler", "schedule_all_waiting_tasks")
        for number in range(1, workers + 1):
            self.processes["worker %d" % number] = self._start(
                "worker-%d" % number, "worker", "--name", "bench-%s-%d" % (tag, number), "--concurrency", str(slots),
                "--cpus", str(slots))
        self.slots = workers * slots
        self._wait_for_workers(workers)

    def _start(self, log_name: str, command: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.log_dir, log_name + ".log"), "w")
        return subprocess.Popen([sys.executable, "-m", "eas_controller", command, *args], cwd=PROJECT_ROOT,
                                env=self.environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _wait_for_workers(self, count: int, timeout: float = 60) -> None:
        import sqlalchemy as sa

        from eas_controller.database.engine import read_transaction
        from eas_controller.database.schema import workers

        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            with read_transaction(self.engine) as connection:
                running = connection.execute(sa.select(sa.func.count()).select_from(workers).where(
                    workers.c.state == "running")).scalar()
            if running >= count:
                return
            time.sleep(0.1)
        raise RuntimeError("workers did not start within %d s; logs in %s" % (timeout, self.log_dir))

    def check_alive(self) -> None:
        for label, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError("%s exited with status %s; see %s" % (label, process.returncode, self.log_dir))

    def pids(self) -> dict[str, int]:
        return {label: process.pid for label, process in self.processes.items()}

    def submit(self, chain: dict) -> int:
        from eas_controller.submission import submit_chain

        job_id, _plan = submit_chain(self.engine, chain, "bench")
        return job_id

    def wait_for_job(self, job_id: int, tasks: int, timeout: float) -> None:
        """Poll until every worker task of the job is finished (done, failed or cancelled)."""
        import sqlalchemy as sa

        from eas_controller.database.engine import read_transaction
        from eas_controller.database.schema import tasks as tasks_table

        query = sa.select(sa.func.count()).select_from(tasks_table).where(
            tasks_table.c.job_id == job_id, tasks_table.c.is_control.is_(False),
            tasks_table.c.state.in_(("done", "failed", "cancelled")))
        deadline = time.time() + timeout
        while time.time() < deadline:
            with read_transaction(self.engine) as connection:
                if connection.execute(query).scalar() >= tasks:
                    return
            self.check_alive()
            time.sleep(0.1)
        raise RuntimeError("job %d did not finish within %d s; logs in %s" % (job_id, timeout, self.log_dir))

    def attempts_of(self, job_id: int) -> list:
        import sqlalchemy as sa

        from eas_controller.database.engine import read_transaction
        from eas_controller.database.schema import attempts, tasks

        with read_transaction(self.engine) as connection:
            return connection.execute(
                sa.select(tasks.c.id.label("task_id"), tasks.c.name, tasks.c.state.label("task_state"),
                          attempts.c.id.label("attempt_id"), attempts.c.state, attempts.c.queued_at,
                          attempts.c.started_at, attempts.c.ended_at, attempts.c.wall_s)
                .select_from(tasks.outerjoin(attempts, attempts.c.task_id == tasks.c.id))
                .where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False)).order_by(tasks.c.id, attempts.c.id)
            ).all()

    def stop(self) -> None:
        from bench.common import delete_amqp_queues

        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.engine.dispose()
        if self.environment["EAS_QUEUE"] == "amqp":
            delete_amqp_queues(self.environment["EAS_AMQP_URL"], self.environment["EAS_AMQP_QUEUE_PREFIX"])


def _integrity(rows: list, tasks: int) -> tuple[int, list[str]]:
    """(duplicate attempts, problems) for the attempt rows of a job."""
    task_ids = {row.task_id for row in rows}
    attempt_rows = [row for row in rows if row.attempt_id is not None]
    problems = []
    if len(task_ids) != tasks:
        problems.append("%d tasks, expected %d" % (len(task_ids), tasks))
    not_done = len({row.task_id for row in rows if row.task_state != "done"})
    if not_done:
        problems.append("%d tasks not done" % not_done)
    failed = sum(1 for row in attempt_rows if row.state != "succeeded")
    if failed:
        problems.append("%d attempts did not succeed" % failed)
    return len(attempt_rows) - len(task_ids), problems


def throughput(services: Services, backend: str, tasks: int, workers: int = 2, queue: str = "sql",
               timeout: float = 3600, memory: bool = False, slots: int = 1) -> list[Result]:
    """N independent null tasks end to end; returns throughput, overhead (and peak memory when asked).

    ``slots`` per worker: 1 runs one task at a time per worker process, like two RQ workers or a Celery
    prefork pool of 2; a worker's default is one slot per core (2 here).
    """
    label = "end to end: %s null tasks, %d workers%s" % ("{:,}".format(tasks), workers,
                                                         " x %d slots" % slots if slots > 1 else "")
    from bench.cpu import CpuMeter, server_pids

    controller = Controller(services, backend, workers, queue, slots=slots)
    sampler = MemorySampler(controller.pids()) if memory else None
    pids = controller.pids()
    meter = CpuMeter({"workers": [pid for label, pid in pids.items() if label.startswith("worker")],
                      "scheduler": [pids["scheduler"]], "database server": server_pids(backend)})
    try:
        if sampler:
            sampler.start()
        meter.start()
        started = time.time()
        job_id = controller.submit({"job_name": "bench-e2e", "task_list": [{"task": "null"}] * tasks})
        submitted = time.time()
        controller.wait_for_job(job_id, tasks, timeout)
        cpu = meter.stop()
        peaks = sampler.stop() if sampler else {}
        rows = controller.attempts_of(job_id)
    finally:
        if sampler and sampler.is_alive():
            sampler.stop()
        controller.stop()
    finished = max(row.ended_at for row in rows if row.ended_at)
    elapsed = finished - started
    duplicates, problems = _integrity(rows, tasks)
    walls = [row.wall_s for row in rows if row.wall_s is not None]
    overhead_ms = (elapsed * controller.slots / tasks - statistics.fmean(walls)) * 1000
    in_worker_ms = statistics.fmean(row.ended_at - row.started_at - row.wall_s for row in rows if row.ended_at) * 1000
    backend_label = backend if queue == "sql" else "amqp"
    cpu_ms = {label: round(seconds * 1000 / tasks, 3) for label, seconds in cpu.items()}
    extra = dict(elapsed_s=round(elapsed, 2), submit_s=round(submitted - started, 2), database=backend,
                 mean_task_wall_ms=round(statistics.fmean(walls) * 1000, 3), in_worker_overhead_ms=round(in_worker_ms, 2),
                 cpu_ms_per_task=cpu_ms, driver=controller.engine.dialect.driver)
    results = [
        Result("end_to_end", label, backend_label, tasks / elapsed, "tasks/s", processes=workers, jobs=tasks,
               duplicates=duplicates, note="; ".join(problems), extra=extra),
        Result("end_to_end", "controller overhead per task (slot time - task time)%s" % (
            ", %d slots per worker" % slots if slots > 1 else ""), backend_label, overhead_ms, "ms",
               processes=workers, jobs=tasks, extra=dict(in_worker_overhead_ms=round(in_worker_ms, 2))),
        # the submission runs in this process and is not counted; the server also serves other clients
        Result("end_to_end", "controller CPU per task (workers + children + scheduler + database server)%s" % (
            ", %d slots per worker" % slots if slots > 1 else ""), backend_label, sum(cpu_ms.values()), "ms",
               processes=workers, jobs=tasks, note="server: %d process(es) found" % len(meter.groups["database server"])
               if backend != "sqlite" else "", extra=dict(cpu_ms_per_task=cpu_ms)),
    ]
    if memory:
        for key in sorted(peaks):
            if key.startswith("worker 1") or key == "scheduler":
                results.append(Result("memory", "peak RSS, %s, %s-task run" % (key, "{:,}".format(tasks)),
                                      backend_label, peaks[key], "MiB", jobs=tasks))
        results[0].extra["peak_rss_mib"] = peaks
    return results


def latency(services: Services, backend: str, links: int, workers: int = 2, queue: str = "sql",
            timeout: float = 1800) -> list[Result]:
    """Ready-to-running latency along a linear chain of ``links`` null tasks."""
    chain = {"job_name": "bench-latency", "task_list": [
        dict({"task": "null", "name": "t%d" % n}, **({"requires_metadata_from": ["t%d" % (n - 1)]} if n else {}))
        for n in range(links)]}
    controller = Controller(services, backend, workers, queue, tag="latency")
    try:
        job_id = controller.submit(chain)
        controller.wait_for_job(job_id, links, timeout)
        rows = controller.attempts_of(job_id)
    finally:
        controller.stop()
    duplicates, problems = _integrity(rows, links)
    ordered = sorted((row for row in rows if row.attempt_id), key=lambda row: int(row.name[1:]))
    pairs = list(zip(ordered, ordered[1:]))
    ready_running = [(b.started_at - a.ended_at) * 1000 for a, b in pairs]
    ready_queued = [(b.queued_at - a.ended_at) * 1000 for a, b in pairs]
    queued_running = [(b.started_at - b.queued_at) * 1000 for _a, b in pairs]
    backend_label = backend if queue == "sql" else "amqp"
    name = "ready -> running latency (%d-task linear chain)" % links
    extra = dict(ready_to_queued_p50_ms=percentile(ready_queued, 0.5), ready_to_queued_p99_ms=percentile(ready_queued, 0.99),
                 queued_to_running_p50_ms=percentile(queued_running, 0.5),
                 queued_to_running_p99_ms=percentile(queued_running, 0.99), database=backend)
    extra = {key: round(value, 2) if isinstance(value, float) else value for key, value in extra.items()}
    return [
        Result("latency", name + " p50", backend_label, percentile(ready_running, 0.5), "ms", processes=workers,
               jobs=links, duplicates=duplicates, note="; ".join(problems), extra=extra),
        Result("latency", name + " p99", backend_label, percentile(ready_running, 0.99), "ms", processes=workers,
               jobs=links, duplicates=duplicates, extra=extra),
    ]


def _guarded(name: str, backend: str, measure) -> list[Result]:
    """One measurement; a failure (a worker that died, a run that timed out) becomes a ``failed`` row."""
    try:
        return measure()
    except Exception as error:
        return [Result("end_to_end", name, backend, None, "tasks/s", note="failed: %s" % str(error)[:300])]


def run(services: Services, quick: bool = True, backends=BACKENDS, tasks: int | None = None,
        links: int | None = None, memory_tasks: int | None = None, default_slots: bool = False) -> list[Result]:
    from bench.queue_claim import amqp_queue_available

    tasks = tasks or (5000 if quick else 20000)
    links = links or (30 if quick else 200)
    timeout = max(180.0, tasks / 10.0)  # a run slower than 10 tasks/s is broken, not slow
    results = []
    for backend in backends:
        reason = unavailable_reason(services, backend)
        if reason:
            results.append(Result.skipped("end_to_end", "end to end: null tasks, 2 workers", backend, reason,
                                          "tasks/s", processes=2))
            continue
        results += _guarded("end to end: null tasks, 2 workers", backend,
                            lambda: throughput(services, backend, tasks, timeout=timeout))
        if default_slots and backend == "mariadb":
            slots = os.cpu_count() or 1
            results += _guarded("end to end: null tasks, 2 workers x %d slots" % slots, backend,
                                lambda: throughput(services, backend, tasks, slots=slots, timeout=timeout))
        if backend == "mariadb":
            name = "end to end through the AMQP queue: null tasks, 2 workers"
            if not amqp_queue_available() or unavailable_reason(services, "amqp"):
                results.append(Result.skipped("end_to_end", name, "amqp",
                                              "no AMQP queue implementation or RabbitMQ unreachable", "tasks/s"))
            else:
                results += _guarded(name, "amqp", lambda: throughput(services, backend, tasks, queue="amqp",
                                                                     timeout=timeout))
        results += _guarded("ready -> running latency", backend, lambda: latency(services, backend, links))
    if memory_tasks and "mariadb" in backends and not unavailable_reason(services, "mariadb"):
        results += _guarded("peak memory run", "mariadb", lambda: throughput(
            services, "mariadb", memory_tasks, memory=True, timeout=max(600.0, memory_tasks / 10.0)))
    return results


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--tasks", type=int, help="tasks in the throughput run (default 5,000 quick, 20,000 full)")
    parser.add_argument("--links", type=int, help="tasks in the latency chain (default 30 quick, 200 full)")
    parser.add_argument("--memory-tasks", type=int, help="also run this many tasks on MariaDB sampling peak memory")
    parser.add_argument("--default-slots", action="store_true",
                        help="also run with each worker's default slots (one per core)")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only these back ends")
    args = parser.parse_args(argv)
    print_results(run(Services.from_environment(), args.quick, tuple(args.backend or BACKENDS), args.tasks, args.links,
                      args.memory_tasks, args.default_slots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
