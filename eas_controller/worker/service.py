"""The worker: claims attempts it can run, runs them in child processes, records the results.

Threads: the main thread claims (a small batch, up to its free slots and capacity); one thread per slot
runs attempts; a heartbeat thread renews the leases of running attempts and the worker's last-seen time.
SIGTERM/SIGINT: stop claiming, let running attempts finish within the grace period, then stop them and
release them back to the queue (not counted as failures). Lost database connections are retried with
backoff; the worker does not die of them.
"""

from __future__ import annotations

import json
import logging
import os
import queue as queue_module
import shutil
import signal
import socket
import threading
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eas_controller import states
from eas_controller.config import Settings
from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.database.schema import attempts, tasks, workers
from eas_controller.queues.base import Queue
from eas_controller.registry import TaskType, load_registry
from eas_controller.worker import completion
from eas_controller.worker.execution import prepare, read_log_lines, run_command
from eas_controller.worker.pool import PythonChild

log = logging.getLogger("eas.worker")


class Capacity:
    """What the worker declared (cpus, gpus, memory) and what is free right now."""

    def __init__(self, cpus: float, gpus: int, memory_gb: float, slots: int):
        self.total = dict(cpu=float(cpus), gpu=int(gpus), memory_gb=float(memory_gb))
        self.free = dict(self.total)
        self.slots = slots
        self.free_slots = slots
        self.lock = threading.Lock()

    @staticmethod
    def needs(task_type: TaskType) -> dict:
        return dict(cpu=task_type.cpu, gpu=task_type.gpu, memory_gb=task_type.memory_gb)

    def can_ever_run(self, task_type: TaskType) -> bool:
        return all(need <= self.total[key] for key, need in self.needs(task_type).items())

    def claimable(self, types: dict[str, TaskType]) -> tuple[list[str], int]:
        """Task types that fit the free capacity, and how many of them can be claimed at once safely."""
        with self.lock:
            fitting = [t for t in types.values() if all(n <= self.free[k] + 1e-9 for k, n in self.needs(t).items())]
            if not fitting or self.free_slots < 1:
                return [], 0
            limit = self.free_slots
            for task_type in fitting:  # even if every claimed attempt is of the hungriest type, they all fit
                for key, need in self.needs(task_type).items():
                    if need > 0:
                        limit = min(limit, int((self.free[key] + 1e-9) // need))
            return sorted(t.name for t in fitting), max(limit, 0)

    def take(self, task_type: TaskType) -> None:
        with self.lock:
            self.free_slots -= 1
            for key, need in self.needs(task_type).items():
                self.free[key] -= need

    def give_back(self, task_type: TaskType) -> None:
        with self.lock:
            self.free_slots += 1
            for key, need in self.needs(task_type).items():
                self.free[key] += need


class AttemptStop:
    """Tells a running attempt to stop: the worker is shutting down, or the attempt was cancelled."""

    def __init__(self, shutdown: threading.Event):
        self.shutdown = shutdown
        self.cancelled = False

    def is_set(self) -> bool:
        return self.cancelled or self.shutdown.is_set()


class Worker:
    def __init__(self, settings: Settings, engine: Engine, queue: Queue, name: str | None = None, concurrency: int = 1,
                 task_types: list[str] | None = None, cpus: float | None = None, gpus: int = 0,
                 memory_gb: float | None = None, burst: bool = False, nice: int = 0, grace_period: float = 30.0,
                 poll_interval: float = 1.0, keep_scratch: bool = False):
        import psutil

        self.settings = settings
        self.engine = engine
        self.queue = queue
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = name or "%s-%d" % (self.host, self.pid)
        self.concurrency = max(1, int(concurrency))
        self.type_filter = set(task_types) if task_types else None
        self.capacity = Capacity(
            cpus if cpus is not None else (os.cpu_count() or 1), gpus,
            memory_gb if memory_gb is not None else psutil.virtual_memory().total / 2**30, self.concurrency,
        )
        self.burst = burst
        self.nice = nice
        self.grace_period = grace_period
        self.poll_interval = poll_interval
        self.keep_scratch = keep_scratch
        self.lease_seconds = settings.lease_seconds
        self.stopping = threading.Event()  # stop claiming
        self.kill_running = threading.Event()  # stop running attempts (after the grace period)
        self.stops: dict[int, AttemptStop] = {}  # attempt id -> its stop signal (cancel_job.py sets one)
        self.work: queue_module.Queue = queue_module.Queue()
        self.running: dict[int, dict] = {}  # attempt id -> claim
        self.running_lock = threading.Lock()
        self.finished = threading.Event()  # set whenever a slot finishes an attempt
        self.heartbeat_stop = threading.Event()
        self.record: dict = {}
        self.types: dict[str, TaskType] = {}
        self.counts = dict(succeeded=0, failed=0, lost=0, released=0)

    # -- set-up ------------------------------------------------------------------------------------------
    def load_types(self) -> None:
        with read_transaction(self.engine) as connection:
            registry = load_registry(connection)
        if self.type_filter:
            unknown = sorted(self.type_filter - set(registry))
            if unknown:
                raise ValueError("unknown task type(s) %s; registered: %s" % (unknown, sorted(registry)))
        self.types = {name: task_type for name, task_type in registry.items()
                      if (self.type_filter is None or name in self.type_filter) and self.capacity.can_ever_run(task_type)}

    def register(self) -> None:
        now = time.time()

        def body(connection):
            return connection.execute(workers.insert().values(
                name=self.name, host=self.host, pid=self.pid, capabilities=json.dumps(sorted(self.types)),
                cpus=self.capacity.total["cpu"], gpus=self.capacity.total["gpu"],
                memory_gb=self.capacity.total["memory_gb"], concurrency=self.concurrency,
                free_slots=self.concurrency, state="running", started_at=now, last_seen=now,
            )).inserted_primary_key[0]

        worker_id = run_transaction(self.engine, body, attempts=0, on_retry=self._database_retry)
        self.record = dict(id=worker_id, name=self.name, host=self.host, pid=self.pid)

    def _database_retry(self, error: BaseException, delay: float) -> None:
        log.warning("database unavailable (%s); retrying in %.1f s", str(error).splitlines()[0][:200], delay)

    # -- main loop ---------------------------------------------------------------------------------------
    def run(self) -> int:
        self.load_types()
        self.register()
        log.info("worker %s (id %d) started: %d slot(s), %g cpu, %d gpu, %.1f GB; task types: %s",
                 self.name, self.record["id"], self.concurrency, self.capacity.total["cpu"], self.capacity.total["gpu"],
                 self.capacity.total["memory_gb"], ", ".join(sorted(self.types)) or "none")
        self._install_signal_handlers()
        slots = [threading.Thread(target=self._slot, name="slot-%d" % i, daemon=True) for i in range(self.concurrency)]
        for slot in slots:
            slot.start()
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        heartbeat.start()
        idle_wait = 0.01
        try:
            while not self.stopping.is_set():
                claimed = self._claim()
                if claimed:
                    idle_wait = 0.01
                    continue
                if self.burst and not self.running and not self._work_may_come():
                    break
                self.finished.wait(idle_wait)
                self.finished.clear()
                idle_wait = min(self.poll_interval, idle_wait * 2)
        finally:
            self._shut_down(slots)
        return 0

    def _claim(self) -> int:
        names, limit = self.capacity.claimable(self.types)
        if limit < 1:
            return 0
        all_types = self.type_filter is None and len(names) == len(self.types) == len(self._registered_names())
        claims = self.queue.claim(self.record, None if all_types else names, limit, self.lease_seconds)
        for claim in claims:
            task_type = self.types[claim["task_type"]]
            self.capacity.take(task_type)
            with self.running_lock:
                self.running[claim["attempt_id"]] = claim
            self.work.put(claim)
        return len(claims)

    def _registered_names(self) -> list:
        if not hasattr(self, "_all_names"):
            with read_transaction(self.engine) as connection:
                self._all_names = list(load_registry(connection))
        return self._all_names

    def _work_may_come(self) -> bool:
        """Burst mode: could anything still reach this worker (ready/queued tasks it runs, or running tasks)?"""
        with read_transaction(self.engine) as connection:
            names = sorted(self.types)
            busy = connection.execute(
                sa.select(tasks.c.id).where(sa.or_(
                    sa.and_(tasks.c.state.in_([states.READY, states.QUEUED]), tasks.c.task_type.in_(names)),
                    sa.and_(tasks.c.state == states.RUNNING, tasks.c.is_control.is_(False)),
                    sa.and_(tasks.c.state == states.READY, tasks.c.is_control.is_(True)),
                )).limit(1)
            ).first()
        return busy is not None

    # -- slots ---------------------------------------------------------------------------------------------
    def _slot(self) -> None:
        child = PythonChild(self.nice)
        try:
            while True:
                claim = self.work.get()
                if claim is None:
                    return
                try:
                    self._run_attempt(claim, child)
                except Exception:
                    log.exception("attempt %d: unexpected error in the worker", claim["attempt_id"])
                finally:
                    with self.running_lock:
                        self.running.pop(claim["attempt_id"], None)
                    self.capacity.give_back(self.types[claim["task_type"]])
                    self.finished.set()
        finally:
            child.close()

    def _run_attempt(self, claim: dict, child: PythonChild) -> None:
        task_type = self.types[claim["task_type"]]
        prepared = prepare(claim, task_type, self.settings.data_dir)
        stop = self.stops[claim["attempt_id"]] = AttemptStop(self.kill_running)
        try:
            if task_type.kind == "python":
                metadata_in = {"metadata": claim["metadata"], "requested_metadata": claim["requested_metadata"]}
                outcome = child.run(prepared, metadata_in, stop)
            else:
                outcome = run_command(prepared, self.nice, stop)
        finally:
            self.stops.pop(claim["attempt_id"], None)
        outcome.log_lines = read_log_lines(prepared, time.time()) + outcome.log_lines
        release = self.kill_running.is_set() and not outcome.succeeded
        made = completion.inspect_outputs(prepared, outcome) if not release else {}
        if not outcome.succeeded and not release and outcome.error_text:
            outcome.log_lines.append((time.time(), "ERROR", "worker", outcome.error_text))
        result = run_transaction(
            self.engine,
            lambda connection: completion.record_outcome(
                connection, self.record, prepared, outcome, made, self.settings.max_attempts, 5.0, release),
            attempts=0, on_retry=self._database_retry,
        )
        if result == completion.LOST:
            self._report_lost(prepared, stop.cancelled)
        self.counts[{"succeeded": "succeeded", "failed": "failed"}.get(result, result)] += 1
        log.info("attempt %d (task %d, %s): %s in %.2f s", claim["attempt_id"], claim["task_id"], claim["task_type"],
                 result, outcome.wall_s)
        if not self.keep_scratch:
            shutil.rmtree(prepared.work_dir, ignore_errors=True)

    def _report_lost(self, prepared, cancelled: bool = False) -> None:
        message = ("lost ownership of attempt %d: its lease expired and the task was given to another attempt; "
                   "the results of this run were discarded" % prepared.attempt_id)
        if cancelled:
            message = ("attempt %d was cancelled while it ran: the worker stopped it and discarded its results"
                       % prepared.attempt_id)
        log.warning(message)

        def body(connection):
            completion.write_log_lines(connection, prepared.attempt_id, prepared.claim["task_id"],
                                       [(time.time(), "WARNING", "worker", message)])

        run_transaction(self.engine, body, attempts=0, on_retry=self._database_retry)

    # -- heartbeat -----------------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        while not self.heartbeat_stop.wait(interval):
            try:
                self.beat()
            except Exception as error:  # the next beat retries; the lease has two more chances
                log.warning("heartbeat failed: %s", str(error).splitlines()[0][:200])

    def beat(self) -> None:
        """Renew the leases of running attempts and the worker's last-seen time."""
        now = time.time()
        with self.running_lock:
            attempt_ids = list(self.running)

        def body(connection):
            cancelled = []
            if attempt_ids:
                connection.execute(attempts.update().where(
                    attempts.c.id.in_(attempt_ids), attempts.c.state == states.A_RUNNING,
                    attempts.c.worker_id == self.record["id"],
                ).values(lease_expires_at=now + self.lease_seconds))
                cancelled = connection.execute(sa.select(attempts.c.id).where(
                    attempts.c.id.in_(attempt_ids), attempts.c.state == states.A_CANCELLED)).scalars().all()
            connection.execute(workers.update().where(workers.c.id == self.record["id"]).values(
                last_seen=now, free_slots=self.capacity.free_slots,
                state="stopping" if self.stopping.is_set() else "running"))
            return cancelled

        for attempt_id in run_transaction(self.engine, body, attempts=3):  # cancelled (cancel_job.py): stop them
            stop = self.stops.get(attempt_id)
            if stop is not None and not stop.cancelled:
                log.info("attempt %d was cancelled: stopping it", attempt_id)
                stop.cancelled = True

    # -- shutdown ------------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum, _frame):
            if self.stopping.is_set():
                log.warning("second %s: stopping running attempts now", signal.Signals(signum).name)
                self.kill_running.set()
            else:
                log.info("%s received: no new claims; running attempts get %g s to finish",
                         signal.Signals(signum).name, self.grace_period)
            self.stopping.set()
            self.finished.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _shut_down(self, slots: list) -> None:
        self.stopping.set()
        deadline = time.time() + self.grace_period
        while self.running and time.time() < deadline:
            self.finished.wait(0.2)
            self.finished.clear()
        if self.running:
            log.warning("grace period over: stopping %d running attempt(s) and releasing them", len(self.running))
            self.kill_running.set()
        for _slot in slots:
            self.work.put(None)
        for slot in slots:
            slot.join()
        self.heartbeat_stop.set()
        try:
            run_transaction(self.engine, lambda connection: connection.execute(
                workers.update().where(workers.c.id == self.record["id"]).values(
                    state="stopped", free_slots=0, last_seen=time.time())), attempts=3)
        except Exception as error:
            log.warning("could not mark the worker stopped: %s", error)
        log.info("worker %s stopped: %s", self.name, ", ".join("%d %s" % (v, k) for k, v in self.counts.items()))
