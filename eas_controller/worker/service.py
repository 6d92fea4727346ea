"""The worker: claims attempts it can run, runs them in child processes, records the results.

Threads: the main thread claims (a small batch, up to its free slots and capacity) and hands attempts to
the slots; one thread per slot runs attempts; a recorder thread writes their results, several per
transaction when several finish together; a heartbeat thread renews the leases of claimed attempts,
writes their new log lines, and updates the worker's row (last seen, free slots) — independently of how
busy the tasks keep the CPU, since tasks run in other processes.

Short tasks: for task types whose recent attempts took under ``PREFETCH_HORIZON_S``, the worker claims up
to ``prefetch`` attempts per slot ahead of time (a local backlog, leased like running attempts), so a
slot starts its next attempt without waiting for a claim and one transaction claims, or records, many
attempts. Types that run longer, or have not run here yet, are never claimed ahead: a long task cannot
hold others hostage in a busy worker's backlog.

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
import dataclasses
import json
import logging
import os
import queue as queue_module
import shutil
import signal
import socket
import threading
import time
import traceback

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eas_controller import metrics, states
from eas_controller.config import Settings
from eas_controller.database.engine import is_retryable, read_transaction, run_transaction
from eas_controller.database.schema import attempts, control_progress, tasks, workers
from eas_controller.queues.base import Queue
from eas_controller.registry import TaskType, load_registry
from eas_controller.worker import completion
from eas_controller.worker.execution import Outcome, prepare, run_command
from eas_controller.worker.logs import LogBuffer
from eas_controller.worker.pool import PythonChild
from eas_controller.worker.resources import Capacity, detect_gpus

log = logging.getLogger("eas.worker")

#: How often the worker re-reads the task-type registry (new types, changed timeouts).
REGISTRY_REFRESH_S = 60.0
#: Attempts of a task type are claimed ahead of free slots only while its recent attempts (preparation,
#: run and checks) took less than this, on average.
PREFETCH_HORIZON_S = 0.25
#: At most this many results are recorded in one transaction.
MAX_GROUP = 100


@dataclasses.dataclass
class RunningAttempt:
    """What the worker keeps about one attempt from its claim to its completion."""

    claim: dict
    task_type: TaskType
    gpu_ids: list | None
    logs: LogBuffer = dataclasses.field(default_factory=LogBuffer)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)  # stop the task now
    lost: str | None = None  # why ownership was lost ("cancelled", "stalled"...), once it was
    recording: bool = False  # the completion transaction has started
    started_at: float | None = None  # when a slot took it (prefetched attempts wait in the backlog first)

    @property
    def attempt_id(self) -> int:
        return self.claim["attempt_id"]

    def is_set(self) -> bool:  # lets the attempt itself serve as the stop event of run_command / PythonChild
        return self.stop.is_set()


class Worker:
    def __init__(self, settings: Settings, engine: Engine, queue: Queue, name: str | None = None, concurrency: int = 1,
                 task_types: list[str] | None = None, cpus: float | None = None, gpus: int | None = None,
                 memory_gb: float | None = None, burst: bool = False, nice: int = 0, grace_period: float = 30.0,
                 poll_interval: float = 1.0, keep_scratch: bool = False, prefetch: int = 50):
        import psutil

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
        self.durations: dict[str, float] = {}  # task type -> moving average of its attempts' slot time (s)
        self.completions: queue_module.Queue = queue_module.Queue()  # finished, waiting to be recorded
        self.trash: queue_module.Queue = queue_module.Queue()  # scratch folders to remove, off the busy threads
        self.lease_seconds = settings.lease_seconds
        self.stopping = threading.Event()  # stop claiming
        self.kill_running = threading.Event()  # stop running attempts (after the grace period)
        self.work: queue_module.Queue = queue_module.Queue()
        self.running: dict[int, RunningAttempt] = {}
        self.running_lock = threading.Lock()
        self.claiming_since: float | None = None  # start of the claim in progress (see beat)
        self.finished = threading.Event()  # set whenever a slot finishes an attempt
        self.heartbeat_stop = threading.Event()
        self.record: dict = {}
        self.types: dict[str, TaskType] = {}
        self.all_type_names: set[str] = set()
        self.types_loaded_at = 0.0
        self.counts = dict(succeeded=0, failed=0, lost=0, released=0)
        self.transactions = dict(claims=0, claimed=0, recordings=0, recorded=0)  # for the closing log line
        self._retry_logged_at = 0.0

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
        """Called before each retry of a transaction; says so at most every few seconds (slots retry at once)."""
        now = time.time()
        if now - self._retry_logged_at >= 5.0:
            self._retry_logged_at = now
            log.warning("database unavailable (%s); retrying with backoff (next in %.1f s)",
                        _first_line(str(getattr(error, "orig", error)))[:200], delay)

    def _read(self, body):
        """A read-only transaction, retried with backoff while the database is unreachable."""
        tried = 0
        while True:
            try:
                with read_transaction(self.engine) as connection:
                    return body(connection)
            except sa.exc.DBAPIError as error:
                if not is_retryable(error):
                    raise
                tried += 1
                delay = min(5.0, 0.05 * 2 ** min(tried, 7))
                self._database_retry(error, delay)
                time.sleep(delay)

    # -- main loop ---------------------------------------------------------------------------------------
    def run(self) -> int:
        self.load_types()
        self.register()
        log.info("worker %s (id %d) started on %s, pid %d: %d slot(s), %g cpu, %d gpu, %.1f GB, lease %g s; "
                 "task types: %s", self.name, self.record["id"], self.host, self.pid, self.concurrency,
                 self.capacity.total["cpu"], self.capacity.total["gpu"], self.capacity.total["memory_gb"],
                 self.lease_seconds, ", ".join(sorted(self.types)) or "none")
        self._install_signal_handlers()
        slots = [threading.Thread(target=self._slot, name="slot-%d" % i, daemon=True) for i in range(self.concurrency)]
        for slot in slots:
            slot.start()
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        heartbeat.start()
        recorder = threading.Thread(target=self._record_loop, name="recorder", daemon=True)
        recorder.start()
        self.cleaner = threading.Thread(target=self._clean_loop, name="cleaner", daemon=True)
        self.cleaner.start()
        idle_wait = 0.01
        failures = 0
        try:
            while not self.stopping.is_set():
                self.finished.clear()  # before looking: a slot that finishes from now on wakes the wait below
                try:
                    if time.time() - self.types_loaded_at > REGISTRY_REFRESH_S:
                        self.load_types()
                    self._dispatch()
                    claimed = self._claim()
                    self._dispatch()
                    if not claimed and self.burst and not self.running and not self._work_may_come():
                        break
                    failures = 0
                except Exception as error:  # a broker or database outage the queue did not absorb: wait, retry
                    failures += 1
                    delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                    log.warning("claiming failed (%s: %s); retrying in %.1f s", error.__class__.__name__,
                                str(error).splitlines()[0][:200] if str(error) else "", delay)
                    self.stopping.wait(delay)
                    continue
                if claimed:
                    idle_wait = 0.01
                    continue
                if self.finished.wait(idle_wait):
                    idle_wait = 0.01  # a slot came free: claim for it at once, and poll briskly after it
                else:
                    idle_wait = min(self.poll_interval, idle_wait * 2)
        finally:
            self._shut_down(slots, recorder)
        return 0

    def _claim(self) -> int:
        """Claim for the free slots, plus attempts of short task types ahead of time; they join the backlog."""
        names, limit = self.capacity.claimable(self.types)
        ahead = self._prefetch_room()
        if limit >= 1 and ahead and all(name in ahead[0] for name in names):
            limit += ahead[1]  # every type the free slots could take is short: claim ahead in the same query
        elif limit < 1 and ahead and self.capacity.free_slots < 1:
            names, limit = sorted(ahead[0]), ahead[1]  # all slots busy: fill the backlog with short work
        if limit < 1 or not names:
            return 0
        all_types = self.type_filter is None and len(names) == len(self.types) == len(self.all_type_names)
        self.claiming_since = time.time()
        try:
            claims = self.queue.claim(self.record, None if all_types else names, limit, self.lease_seconds)
            if claims:
                self.transactions["claims"] += 1
                self.transactions["claimed"] += len(claims)
                metrics.claimed(len(claims))
            for claim in claims:
                task_type = self.types.get(claim["task_type"])
                if task_type is None:  # registered since the last refresh
                    self.load_types()
                    task_type = self.types.get(claim["task_type"])
                if task_type is None:
                    self._give_back(claim, "released: this worker cannot run task type %s" % claim["task_type"])
                    continue
                running = RunningAttempt(claim, task_type, None)
                with self.running_lock:
                    self.running[running.attempt_id] = running
                self.backlog.append(running)
        finally:
            self.claiming_since = None
        return len(claims)

    def _prefetch_room(self) -> tuple[set, int] | None:
        """(short task types, how many more attempts the backlog may take), or None when nothing may be
        claimed ahead. The backlog holds at most ``prefetch`` per slot, and no more than the slots get
        through in about ``PREFETCH_HORIZON_S``; it is refilled once it is half empty, so that each claim
        takes many attempts rather than one each time a slot takes one."""
        if not self.prefetch or self.stopping.is_set():
            return None
        short = {name: took for name, took in self.durations.items() if name in self.types and took < PREFETCH_HORIZON_S}
        if not short:
            return None
        slowest = max(max(short.values()), 0.001)
        size = min(self.prefetch, int(PREFETCH_HORIZON_S / slowest)) * self.concurrency
        room = size - len(self.backlog)
        return (set(short), room) if room > 0 and len(self.backlog) <= size // 2 else None

    def _dispatch(self) -> None:
        """Hand backlog attempts to free slots, in claim order, while the next one fits the free capacity."""
        while self.backlog:
            running = self.backlog[0]
            if running.lost:  # taken away while it waited (cancelled, or its lease expired): never started
                self.backlog.popleft()
                self._forget(running)
                self._report_lost(running)
                self.counts["lost"] += 1
                metrics.attempt_finished(running.task_type.name, completion.LOST, None)
                continue
            if not self.capacity.fits(running.task_type):
                return
            self.backlog.popleft()
            running.gpu_ids = self.capacity.take(running.task_type)
            self.work.put(running)

    def _forget(self, running: RunningAttempt) -> None:
        with self.running_lock:
            self.running.pop(running.attempt_id, None)
        self.finished.set()

    def _give_back(self, claim: dict, note: str) -> None:
        log.warning("attempt %d (task %d): %s", claim["attempt_id"], claim["task_id"], note)
        run_transaction(self.engine, lambda connection: completion.release_attempt(
            connection, claim["attempt_id"], claim["task_id"], time.time(), note=note), attempts=0,
            on_retry=self._database_retry)

    def _work_may_come(self) -> bool:
        """Burst mode: could anything still reach this worker (ready/queued tasks it runs, or running tasks)?"""
        names = sorted(self.types)

        def body(connection):
            return connection.execute(
                sa.select(tasks.c.id).where(sa.or_(
                    sa.and_(tasks.c.state.in_([states.READY, states.QUEUED]), tasks.c.task_type.in_(names)),
                    sa.and_(tasks.c.state == states.RUNNING, tasks.c.is_control.is_(False)),
                    sa.and_(tasks.c.state == states.READY, tasks.c.is_control.is_(True)),
                )).limit(1)
            ).first() or connection.execute(sa.select(control_progress.c.id).limit(1)).first()  # a loop's next pass

        return self._read(body) is not None

    # -- slots ---------------------------------------------------------------------------------------------
    def _slot(self) -> None:
        child = PythonChild(self.nice)
        try:
            while True:
                running = self.work.get()
                if running is None:
                    return
                handed_over = False
                try:
                    handed_over = self._run_attempt(running, child)
                except Exception:
                    log.exception("attempt %d: unexpected error in the worker", running.attempt_id)
                finally:
                    self.capacity.give_back(running.task_type, running.gpu_ids)
                    if not handed_over:
                        self._forget(running)
                    self.finished.set()
        finally:
            child.close()

    def _run_attempt(self, running: RunningAttempt, child: PythonChild) -> bool:
        """Run one attempt and check its outputs; True once its result is handed to the recorder."""
        claim, task_type, logs = running.claim, running.task_type, running.logs
        running.started_at = time.time()
        prepared = None
        try:
            prepared = prepare(claim, task_type, self.settings.data_dir, running.gpu_ids, logs)
            if task_type.kind == "python":
                metadata_in = {"metadata": claim["metadata"], "requested_metadata": claim["requested_metadata"]}
                outcome = child.run(prepared, metadata_in, running)
            else:
                outcome = run_command(prepared, self.nice, running)
        except Exception:  # the worker could not start or watch the task: fail the attempt with the reason
            outcome = Outcome(succeeded=False, error_text="the worker could not run the task:\n" + traceback.format_exc())
        if running.lost:  # the heartbeat found it taken away and stopped it: nothing of this run is kept
            self._finished(running, prepared, outcome, completion.LOST)
            return False
        item = self._check(running, prepared, outcome, child)
        took = time.time() - running.started_at
        previous = self.durations.get(task_type.name)
        self.durations[task_type.name] = took if previous is None else 0.8 * previous + 0.2 * took
        self.completions.put((running, item))
        return True

    def _check(self, running: RunningAttempt, prepared, outcome: Outcome, child: PythonChild) -> completion.Completion:
        """Check the outputs (in the slot: QC runs in its child) and say in the attempt's log how it ended."""
        logs = running.logs
        release = outcome.stopped and self.kill_running.is_set() and not running.lost
        made = {}
        if prepared is not None and not release:
            try:
                made = completion.inspect_outputs(prepared, outcome, lambda *args: child.check_products(*args, stop_event=running))
            except Exception:
                outcome.succeeded = False
                outcome.error_text = "the worker could not check the outputs:\n" + traceback.format_exc()
        if release:
            logs.add("WARNING", "worker", "stopped at shutdown after the %g s grace period; released back to the queue "
                     "(not counted as a failure)" % self.grace_period)
        elif outcome.timed_out:
            logs.add("ERROR", "worker", "%s: the task's process group was killed (SIGTERM, then SIGKILL)" % outcome.error_text)
        elif not outcome.succeeded:
            logs.add("ERROR", "worker", outcome.error_text or "failed")
        if prepared is None:  # nothing was set up: record the failure without files
            prepared = _bare_prepared(running, self.settings.data_dir)
        return completion.Completion(prepared, outcome, made, release, started_at=running.started_at)

    def _finished(self, running: RunningAttempt, prepared, outcome: Outcome, result: str) -> None:
        """After the result is recorded (or discarded): say so, count it, clean the scratch folder."""
        claim = running.claim
        if result == completion.LOST:
            self._report_lost(running)
        self.counts[result if result in self.counts else "failed"] += 1
        metrics.attempt_finished(claim["task_type"], result, outcome.wall_s)
        log.info("attempt %d (task %d, %s): %s in %.2f s%s", claim["attempt_id"], claim["task_id"], claim["task_type"],
                 result, outcome.wall_s, "" if result != states.A_FAILED else ": " + _first_line(outcome.error_text))
        if prepared is not None and prepared.work_dir and (not self.keep_scratch or result == completion.LOST):
            self.trash.put(prepared.work_dir)

    # -- recording -------------------------------------------------------------------------------------------
    def _record_loop(self) -> None:
        """Record results as they come; what finished while the previous transaction ran goes in the next one."""
        while True:
            first = self.completions.get()
            if first is None:
                return
            group, stop = [first], False
            while len(group) < MAX_GROUP:
                try:
                    item = self.completions.get_nowait()
                except queue_module.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            try:
                self._record(group)
            except Exception:
                log.exception("recording %d result(s) failed unexpectedly", len(group))
            finally:
                for running, _item in group:
                    self._forget(running)
            if stop:
                return

    def _clean_loop(self) -> None:
        while True:
            path = self.trash.get()
            if path is None:
                return
            shutil.rmtree(path, ignore_errors=True)

    def _record(self, group: list) -> None:
        """One fenced transaction for the whole group; if it fails for a reason retrying cannot mend (bad data),
        each attempt is recorded alone, and one that still fails is recorded as failed with the reason."""
        for running, _item in group:
            running.recording = True
        queue = self.queue if self.queue.in_database else None
        items = [item for _running, item in group]

        def body(connection):
            return completion.record_outcomes(connection, self.record, items, self.settings.max_attempts,
                                              self.settings.retry_backoff_s, queue)

        try:
            results = run_transaction(self.engine, body, attempts=0, on_retry=self._database_retry)
            self.transactions["recordings"] += 1
            self.transactions["recorded"] += len(group)
        except Exception as error:
            if len(group) > 1:
                for one in group:
                    self._record([one])
                return
            log.exception("attempt %d: the result could not be recorded", group[0][1].attempt_id)
            results = [self._record_failure(group[0][1], queue, error)]
        for (running, item), result in zip(group, results):
            if result != completion.LOST:
                item.publication.commit()  # drop the hard links that kept the previous versions during the transaction
            self._finished(running, item.prepared, item.outcome, result)

    def _record_failure(self, item: completion.Completion, queue, error: Exception) -> str:
        """The result could not be recorded (not a lost connection: that is retried): end the attempt anyway."""
        item.publication.undo()
        item.outcome.succeeded, item.made = False, {}
        item.outcome.error_text = "the worker could not record the result: %s" % _first_line(str(error))
        item.outcome.log_lines = [(time.time(), "ERROR", "worker", item.outcome.error_text)]
        return run_transaction(self.engine, lambda connection: completion.record_outcomes(
            connection, self.record, [item], self.settings.max_attempts, self.settings.retry_backoff_s, queue)[0],
            attempts=0, on_retry=self._database_retry)

    def _report_lost(self, running: RunningAttempt) -> None:
        """Say once, in the worker's log and the attempt's, that this run's results were discarded."""
        if running.lost == "reported":
            return
        attempt_id, task_id = running.attempt_id, running.claim["task_id"]
        reason = running.lost

        def body(connection):
            state = reason or connection.execute(sa.select(attempts.c.state).where(attempts.c.id == attempt_id)).scalar()
            if state == states.A_CANCELLED:
                message = "attempt %d was cancelled while it ran: the worker stopped it and discarded its results" % attempt_id
            else:
                message = ("lost ownership of attempt %d (task %d): %s; the results of this run were discarded" % (
                    attempt_id, task_id, state if reason else "it is now %s (its lease expired and the task was given "
                    "to another attempt)" % state))
            completion.write_log_lines(connection, attempt_id, task_id, [(time.time(), "WARNING", "worker", message)])
            return message

        running.lost = "reported"
        try:
            log.warning(run_transaction(self.engine, body, attempts=0, on_retry=self._database_retry))
        except Exception as error:
            log.warning("lost ownership of attempt %d; the note could not be stored: %s", attempt_id, error)

    # -- heartbeat -----------------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        failing_since = None
        while not self.heartbeat_stop.wait(interval):
            try:
                self.beat()
                if failing_since is not None:
                    log.info("heartbeat: database reachable again after %.0f s", time.time() - failing_since)
                    failing_since = None
            except Exception as error:  # the next beat retries; the lease has two more chances
                if failing_since is None:
                    failing_since = time.time()
                log.warning("heartbeat failed (%s); leases are renewed at the next beat, in %.1f s",
                            _first_line(str(error))[:200], interval)

    def beat(self) -> None:
        """Renew the leases of the attempts this worker still owns, write their new log lines, update the
        worker's row; stop the attempts it no longer owns and release orphaned claims."""
        now = time.time()
        # Read the claim marker before taking the list of running attempts: an attempt claimed after
        # ``now`` may be missing from the list, but it is also excluded from the orphans.
        cutoff = min(now, self.claiming_since or now)
        with self.running_lock:
            current = list(self.running.values())
        pending = {}  # attempt id -> lines taken from its buffer (written only if the attempt is still ours)
        for running in current:
            if running.logs.write_lock.acquire(blocking=False):
                pending[running.attempt_id] = running.logs.take()
        by_id = {running.attempt_id: running for running in current}
        me = self.record["id"]

        def body(connection):
            lost, orphans = {}, []
            if by_id:
                rows = connection.execute(
                    sa.select(attempts.c.id, attempts.c.state, attempts.c.worker_id)
                    .where(attempts.c.id.in_(list(by_id))).with_for_update()).all()
                owned = []
                for row in rows:
                    if row.worker_id == me and row.state == states.A_RUNNING:
                        owned.append(row.id)
                    elif not (row.worker_id == me and by_id[row.id].recording):
                        lost[row.id] = row.state
                if owned:
                    connection.execute(attempts.update().where(attempts.c.id.in_(owned)).values(
                        lease_expires_at=now + self.lease_seconds))
                    for attempt_id in owned:
                        completion.write_log_lines(connection, attempt_id, by_id[attempt_id].claim["task_id"],
                                                   pending.get(attempt_id, []))
            query = sa.select(attempts.c.id, attempts.c.task_id).where(
                attempts.c.state == states.A_RUNNING, attempts.c.worker_id == me, attempts.c.started_at < cutoff)
            if by_id:
                query = query.where(attempts.c.id.notin_(list(by_id)))
            for row in connection.execute(query.with_for_update()).all():
                completion.release_attempt(connection, row.id, row.task_id, now, note=(
                    "released: the worker never received this claim (the database connection was lost while "
                    "it committed); not counted as a failure"))
                orphans.append(row.id)
            connection.execute(workers.update().where(workers.c.id == me).values(
                last_seen=now, free_slots=self.capacity.free_slots,
                capabilities=json.dumps(sorted(self.types)),
                state="stopping" if self.stopping.is_set() else "running"))
            return lost, orphans

        try:
            lost, orphans = run_transaction(self.engine, body, attempts=3)
        except BaseException:
            for attempt_id, lines in pending.items():
                by_id[attempt_id].logs.put_back(lines)
            raise
        finally:
            for attempt_id in pending:
                by_id[attempt_id].logs.write_lock.release()
        for attempt_id in orphans:
            log.warning("attempt %d was claimed for this worker but the claim's reply was lost with the database "
                        "connection: released back to the queue", attempt_id)
        for attempt_id, state in lost.items():
            running = by_id[attempt_id]
            if running.lost:
                continue
            running.lost = state if state == states.A_CANCELLED else (
                "the attempt is now %s (the lease expired while this worker was paused or cut off, and the task "
                "was given to another attempt)" % state)
            log.warning("lost ownership of attempt %d (task %d): it is now %s; stopping the task", attempt_id,
                        running.claim["task_id"], state)
            running.stop.set()

    # -- shutdown ------------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum, _frame):
            if self.stopping.is_set():
                log.warning("second %s: stopping running attempts now", signal.Signals(signum).name)
                self._stop_running()
            else:
                log.info("%s received: no new claims; running attempts get %g s to finish",
                         signal.Signals(signum).name, self.grace_period)
            self.stopping.set()
            self.finished.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

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
        self.heartbeat_stop.set()
        try:
            run_transaction(self.engine, lambda connection: connection.execute(
                workers.update().where(workers.c.id == self.record["id"]).values(
                    state="stopped", free_slots=0, last_seen=time.time())), attempts=3)
        except Exception as error:
            log.warning("could not mark the worker stopped: %s", error)
        try:
            self.queue.close()
        except Exception:
            pass
        done = self.transactions
        log.info("worker %s stopped: %s; %d attempt(s) claimed in %d claim(s), %d result(s) recorded in %d "
                 "transaction(s)", self.name, ", ".join("%d %s" % (v, k) for k, v in self.counts.items()),
                 done["claimed"], done["claims"], done["recorded"], done["recordings"])

    def _release_backlog(self) -> None:
        """Give back the attempts claimed ahead that no slot started (not failures; they run elsewhere)."""
        waiting = list(self.backlog)
        self.backlog.clear()
        if not waiting:
            return
        me, now = self.record["id"], time.time()
        note = "released: the worker shut down before starting it (not counted as a failure)"

        def body(connection):
            owned = connection.execute(sa.select(attempts.c.id).where(
                attempts.c.id.in_([running.attempt_id for running in waiting]), attempts.c.worker_id == me,
                attempts.c.state == states.A_RUNNING).with_for_update()).scalars().all()
            for running in waiting:
                if running.attempt_id in owned:
                    completion.release_attempt(connection, running.attempt_id, running.claim["task_id"], now, note=note)
            return len(owned)

        try:
            released = run_transaction(self.engine, body, attempts=3)
            self.counts["released"] += released
            log.info("released %d attempt(s) claimed ahead and not started", released)
        except Exception as error:  # their leases expire and the scheduler gives them to other workers
            log.warning("could not release %d attempt(s) claimed ahead (%s); they are retried when their leases "
                        "expire", len(waiting), _first_line(str(error))[:200])
        for running in waiting:
            self._forget(running)


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")


def _bare_prepared(running: RunningAttempt, data_dir: str):
    from eas_controller.worker.execution import PreparedAttempt

    return PreparedAttempt(claim=running.claim, task_type=running.task_type, work_dir="", environment={}, inputs={},
                           outputs={}, final_outputs={}, description_path="", metadata_in_path="", metadata_out_path="",
                           logs=running.logs, data_dir=data_dir)
