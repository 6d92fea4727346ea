"""The worker: claims attempts it can run, runs them in child processes, records the results.

Threads: the main thread claims (a small batch, up to its free slots and capacity, see
:mod:`.claiming`) and hands attempts to the slots; one thread per slot runs attempts (:mod:`.slots`); a
recorder thread writes their results, several per transaction when several finish together
(:mod:`.recording`); a heartbeat thread renews the leases of claimed attempts (:mod:`.heartbeat`). Every
write goes through :mod:`eas_controller.store`.

Ownership: every write about an attempt is fenced (it happens only while the attempt is still ``running``
under this worker). When the heartbeat finds an attempt taken away — its lease expired while this worker
was paused or cut off and the scheduler gave the task to a new attempt, or it was cancelled — the worker
logs "lost ownership", stops the task and discards its results.

SIGTERM/SIGINT: stop claiming, let running attempts finish within the grace period, then stop them and
release them back to the queue (not counted as failures). A second signal stops them at once. Lost
database or broker connections are retried with backoff and logged; the worker does not die of them.
"""

from __future__ import annotations

import collections
import logging
import os
import queue as queue_module
import signal
import socket
import threading
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eas_controller.backoff import Backoff
from eas_controller.config import Settings
from eas_controller.database.engine import is_retryable, read_transaction, run_transaction
from eas_controller.poller import STOP, Poller
from eas_controller.queues.base import Queue
from eas_controller.registry import TaskType, load_registry
from eas_controller.retries import RetryPolicy
from eas_controller.store import workers as worker_store
from eas_controller.worker.attempt import RunningAttempt, first_line
from eas_controller.worker.claiming import PREFETCH_HORIZON_S, ClaimingMixin
from eas_controller.worker.heartbeat import HeartbeatMixin
from eas_controller.worker.listening import IdleWaitMixin
from eas_controller.worker.neighbours import bury_dead_neighbours
from eas_controller.worker.recording import MAX_GROUP, RecordingMixin
from eas_controller.worker.resources import Capacity, detect_gpus
from eas_controller.worker.slots import SlotsMixin
from eas_controller.worker.transfer import Transfer

log = logging.getLogger("eas.worker")

__all__ = ["MAX_GROUP", "PREFETCH_HORIZON_S", "Worker", "cluster_labels"]

#: How often the worker re-reads the task-type registry (new types, changed timeouts).
REGISTRY_REFRESH_S = 60.0
#: Environment variables that say where a worker runs, recorded with its row (shown by the diagnostics).
CLUSTER_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME",
                     "KUBERNETES_POD_NAME", "KUBERNETES_NAMESPACE")


def cluster_labels() -> dict[str, str]:
    """The Slurm job and array ids, or the Kubernetes pod, this worker runs in (from its environment)."""
    return {name.lower(): os.environ[name] for name in CLUSTER_VARIABLES if os.environ.get(name)}


class Worker(ClaimingMixin, SlotsMixin, RecordingMixin, HeartbeatMixin, IdleWaitMixin, Poller):
    log = log

    def __init__(self, settings: Settings, engine: Engine, queue: Queue, name: str | None = None, concurrency: int = 1,
                 task_types: list[str] | None = None, cpus: float | None = None, gpus: int | None = None,
                 memory_gb: float | None = None, burst: bool = False, nice: int = 0, grace_period: float = 30.0,
                 poll_interval: float = 1.0, keep_scratch: bool = False, prefetch: int = 100):
        import psutil

        super().__init__(idle_min=0.01, idle_max=poll_interval, failure_min=1.0, failure_max=30.0)
        self.settings = settings
        self.engine = engine
        self.queue = queue
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = name or "%s-%d" % (self.host, self.pid)
        self.concurrency = max(1, int(concurrency))
        self.type_filter = set(task_types) if task_types else None
        gpu_ids = detect_gpus()
        self.capacity = Capacity(
            cpus if cpus is not None else (os.cpu_count() or 1), len(gpu_ids) if gpus is None else gpus,
            memory_gb if memory_gb is not None else psutil.virtual_memory().total / 2**30, self.concurrency, gpu_ids,
        )
        self.burst = burst
        self.nice = nice
        self.grace_period = grace_period
        self.poll_interval = poll_interval
        self.keep_scratch = keep_scratch
        self.prefetch = max(0, int(prefetch))
        self.backlog: collections.deque[RunningAttempt] = collections.deque()  # claimed, waiting for a slot
        self.backlog_lock = threading.Lock()  # the main thread and the slots both take from the backlog
        self.in_batches = 0  # attempts slots took in batches that have no outcome yet (under backlog_lock)
        self.refill_at = 0  # a slot wakes the main thread to claim once the backlog is down to this
        self.durations: dict[str, float] = {}  # task type -> moving average of its attempts' slot time (s)
        # finished, waiting to be recorded; bounded, so that a SIGKILL loses at most this much finished work
        self.completions: queue_module.Queue = queue_module.Queue(maxsize=2 * MAX_GROUP + self.concurrency)
        self.trash: queue_module.Queue = queue_module.Queue()  # scratch folders to remove, off the busy threads
        self.lease_seconds = settings.lease_seconds
        self.transfer = Transfer.for_worker(settings, self.name)  # URIs: inputs, outputs, cached shared files
        self.policy = RetryPolicy(settings.max_attempts, settings.retry_backoff_s, settings.max_lost_attempts)
        self.kill_running = threading.Event()  # stop running attempts (after the grace period)
        self.work: queue_module.Queue = queue_module.Queue()
        self.running: dict[int, RunningAttempt] = {}
        self.running_lock = threading.Lock()
        self.claiming_since: float | None = None  # start of the claim in progress (see beat)
        self.finished = self.wake  # set whenever a slot finishes an attempt: claim for it at once
        self.heartbeat_stop = threading.Event()
        self.record: dict = {}
        self.types: dict[str, TaskType] = {}
        self.all_type_names: set[str] = set()
        self.types_loaded_at = 0.0
        self.counts = dict(succeeded=0, failed=0, lost=0, released=0)
        # for the closing log line
        self.transactions = dict(claims=0, claimed=0, recordings=0, recorded=0, batches=0, batched=0)
        self._retry_logged_at = 0.0
        self._init_idle_wait()

    # -- set-up ------------------------------------------------------------------------------------------
    def load_types(self) -> None:
        registry = self._read(load_registry)
        if self.type_filter:
            unknown = sorted(self.type_filter - set(registry))
            if unknown:
                raise ValueError("unknown task type(s) %s; registered: %s" % (unknown, sorted(registry)))
        wanted = {name: task_type for name, task_type in registry.items()
                  if self.type_filter is None or name in self.type_filter}
        types = {name: task_type for name, task_type in wanted.items() if self.capacity.can_ever_run(task_type)}
        for name in sorted(set(wanted) - set(types)):
            if name not in self.all_type_names:  # said once, at start or when the type appears
                log.info("task type %s needs more than this worker offers (%s): not claimed here",
                         name, self.capacity.shortfall(wanted[name]))
        self.types.update(types)  # a running attempt may still refer to a type that was changed
        for name in set(self.types) - set(types):
            del self.types[name]
        self.all_type_names = set(registry)
        self.types_loaded_at = time.time()

    def register(self) -> None:
        capabilities = sorted(self.types)

        def body(connection):
            bury_dead_neighbours(connection, self.host, None, self.policy)
            return worker_store.register(connection, self.name, self.host, self.pid, capabilities,
                                         self.capacity.total["cpu"], self.capacity.total["gpu"],
                                         self.capacity.total["memory_gb"], self.concurrency, cluster_labels())

        worker_id = run_transaction(self.engine, body, attempts=0, on_retry=self._database_retry)
        self.record = dict(id=worker_id, name=self.name, host=self.host, pid=self.pid)

    def _database_retry(self, error: BaseException, delay: float) -> None:
        """Called before each retry of a transaction; says so at most every few seconds (slots retry at once)."""
        now = time.time()
        if now - self._retry_logged_at >= 5.0:
            self._retry_logged_at = now
            log.warning("database unavailable (%s); retrying with backoff (next in %.1f s)",
                        first_line(str(getattr(error, "orig", error)))[:200], delay)

    def _read(self, body):
        """A read-only transaction, retried with backoff while the database is unreachable."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                with read_transaction(self.engine) as connection:
                    return body(connection)
            except sa.exc.DBAPIError as error:
                if not is_retryable(error):
                    raise
                delay = backoff.next()
                self._database_retry(error, delay)
                time.sleep(delay)

    # -- main loop ----------------------------------------------------------------------------------------
    def run(self) -> int:
        self.load_types()
        self.register()
        log.info("worker %s (id %d) started on %s, pid %d: %d slot(s), %g cpu, %d gpu, %.1f GB, lease %g s; "
                 "task types: %s", self.name, self.record["id"], self.host, self.pid, self.concurrency,
                 self.capacity.total["cpu"], self.capacity.total["gpu"], self.capacity.total["memory_gb"],
                 self.lease_seconds, ", ".join(sorted(self.types)) or "none")
        self.install_signal_handlers()
        slots = [threading.Thread(target=self._slot, name="slot-%d" % i, daemon=True) for i in range(self.concurrency)]
        for slot in slots:
            slot.start()
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        heartbeat.start()
        recorder = threading.Thread(target=self._record_loop, name="recorder", daemon=True)
        recorder.start()
        self.cleaner = threading.Thread(target=self._clean_loop, name="cleaner", daemon=True)
        self.cleaner.start()
        self._start_listener()
        try:
            self.run_loop()
        finally:
            self._shut_down(slots, recorder)
        return 0

    def poll(self):
        """One round of the main loop: refresh the registry now and then, hand out the backlog, claim."""
        if time.time() - self.types_loaded_at > REGISTRY_REFRESH_S:
            self.load_types()
        self._dispatch()
        claimed = self._claim()
        self._dispatch()
        self._note_activity(claimed)
        if not claimed and self.burst and not self.running and not self._work_may_come():
            return STOP
        return claimed

    def on_failure(self, error: Exception, delay: float) -> None:
        """A broker or database outage the queue did not absorb: wait, retry."""
        log.warning("claiming failed (%s: %s); retrying in %.1f s", error.__class__.__name__,
                    str(error).splitlines()[0][:200] if str(error) else "", delay)

    def on_signal(self, signum: int) -> None:
        if self.stopping.is_set():
            log.warning("second %s: stopping running attempts now", signal.Signals(signum).name)
            self._stop_running()
        else:
            log.info("%s received: no new claims; running attempts get %g s to finish",
                     signal.Signals(signum).name, self.grace_period)

    # -- shutdown -----------------------------------------------------------------------------------------
    def _stop_running(self) -> None:
        self.kill_running.set()
        with self.running_lock:
            for running in self.running.values():
                running.stop.set()

    def _shut_down(self, slots: list, recorder: threading.Thread) -> None:
        self.stopping.set()
        self._release_backlog()
        deadline = time.time() + self.grace_period
        while self.running and time.time() < deadline:
            self.finished.wait(0.2)
            self.finished.clear()
        if self.running:
            log.warning("grace period over: stopping %d running attempt(s) and releasing them", len(self.running))
            self._stop_running()
        for _slot in slots:
            self.work.put(None)
        for slot in slots:
            slot.join()
        self.completions.put(None)
        recorder.join()
        self.trash.put(None)
        self.cleaner.join()
        if not self.keep_scratch:
            self.transfer.close()  # the shared files this worker fetched
        self.heartbeat_stop.set()
        try:
            run_transaction(self.engine, lambda connection: worker_store.mark_stopped(connection, self.record["id"]),
                            attempts=3)
        except Exception as error:
            log.warning("could not mark the worker stopped: %s", error)
        try:
            self.queue.close()
        except Exception:
            pass
        done = self.transactions
        log.info("worker %s stopped: %s; %d attempt(s) claimed in %d claim(s), %d result(s) recorded in %d "
                 "transaction(s); %d attempt(s) run in %d batch(es) of short tasks; woken %d time(s) by queue "
                 "notifications", self.name, ", ".join("%d %s" % (v, k) for k, v in self.counts.items()),
                 done["claimed"], done["claims"], done["recorded"], done["recordings"], done["batched"],
                 done["batches"], self.notifications)
