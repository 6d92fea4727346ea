"""Claiming: take attempts for the free slots (and, for short task types, ahead of them) into a local
backlog, hand them to slots as capacity frees up, and give back what was claimed but never started.

Short tasks: for task types whose recent attempts took under ``PREFETCH_HORIZON_S``, the worker claims up
to ``prefetch`` attempts per slot ahead of time (a local backlog, leased like running attempts), so a
slot starts its next attempt without waiting for a claim and one transaction claims, or records, many
attempts. Types that run longer, or have not run here yet, are never claimed ahead: a long task cannot
hold others hostage in a busy worker's backlog.
"""

from __future__ import annotations

import logging
import time

from eas_controller import metrics
from eas_controller.database.engine import run_transaction
from eas_controller.store import attempts as attempt_store
from eas_controller.store import tasks as task_store
from eas_controller.worker.attempt import RunningAttempt, first_line
from eas_controller.worker.completion import LOST
from eas_controller.worker.execution import batchable

log = logging.getLogger("eas.worker")

#: Attempts of a task type are claimed ahead of free slots only while its recent attempts (preparation,
#: run and checks) took less than this, on average.
PREFETCH_HORIZON_S = 0.25
#: ``python:`` attempts of a type whose recent attempts took less than this go to the child in batches, at most
#: MAX_BATCH to a batch and about BATCH_SPAN_S of work: one round trip per batch instead of one per task.
BATCH_HORIZON_S = 0.01
MAX_BATCH = 16
BATCH_SPAN_S = 0.05
SHUTDOWN_RELEASE_NOTE = "released: the worker shut down before starting it (not counted as a failure)"


class ClaimingMixin:
    """The :class:`~eas_controller.worker.service.Worker`'s claiming side (runs on its main thread)."""

    def _claim(self) -> int:
        """Claim for the free slots, plus attempts of short task types ahead of time; they join the backlog."""
        ahead = self._prefetch_room()
        if ahead is None and self.capacity.free_slots < 1:
            return 0  # every slot busy and the backlog full enough: nothing to claim
        names, limit = self.capacity.claimable(self.types)
        if limit >= 1 and ahead and all(name in ahead[0] for name in names):
            limit += ahead[1]  # every type the free slots could take is short: claim ahead in the same query
        elif limit < 1 and ahead and self.capacity.free_slots < 1:
            names, limit = sorted(ahead[0]), ahead[1]  # all slots busy: fill the backlog with short work
        if limit < 1 or not names:
            return 0
        all_types = self.type_filter is None and len(names) == len(self.types) == len(self.all_type_names)
        self.claiming_since = time.time()
        try:
            # with attempts at hand, a claim does not wait for news of more (the backlog must reach the slots)
            claims = self.queue.claim(self.record, None if all_types else names, limit, self.lease_seconds,
                                      wait=not self.backlog)
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
                with self.backlog_lock:
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
        self.refill_at = size // 2
        room = size - len(self.backlog)
        return (set(short), room) if room > 0 and len(self.backlog) <= size // 2 else None

    def _dispatch(self) -> None:
        """Hand backlog attempts to free slots, in claim order, while the next one fits the free capacity."""
        while self.backlog:
            with self.backlog_lock:
                running = self.backlog.popleft() if self.backlog and self.backlog[0].lost else None
            if running is not None:  # taken away while it waited (cancelled, or its lease expired): never started
                self._forget(running)
                self._report_lost(running)
                self.counts["lost"] += 1
                metrics.attempt_finished(running.task_type.name, LOST, None)
                continue
            running = self._take_from_backlog()
            if running is None:
                return
            self.work.put(running)

    def _take_from_backlog(self) -> RunningAttempt | None:
        """The next backlog attempt, with its resources taken, if it fits the free capacity now. A slot that
        finished calls this itself and goes straight on to the next short task: the main thread is woken
        only to claim (the backlog is low) or to deal with what a slot cannot start."""
        with self.backlog_lock:
            if not self.backlog or self.backlog[0].lost or self.stopping.is_set():
                return None
            running = self.backlog[0]
            if not self.capacity.fits(running.task_type):
                return None
            self.backlog.popleft()
            running.gpu_ids = self.capacity.take(running.task_type)
            return running

    def _take_followers(self, leader: RunningAttempt) -> list[RunningAttempt]:
        """Backlog attempts to run right after ``leader`` in the same request to its slot's child: of the same
        short ``python:`` type, with nothing to set up before they start (:func:`batchable`). They use the
        leader's slot and resources, one after the other."""
        took = self.durations.get(leader.task_type.name)
        if took is None or took >= BATCH_HORIZON_S or leader.alone or not batchable(leader.claim, leader.task_type):
            return []
        room = min(MAX_BATCH, int(BATCH_SPAN_S / max(took, BATCH_SPAN_S / MAX_BATCH))) - 1
        followers = []
        with self.backlog_lock:
            while room > 0 and self.backlog and not self.stopping.is_set():
                following = self.backlog[0]
                if (following.lost or following.alone or following.task_type.name != leader.task_type.name
                        or not batchable(following.claim, following.task_type)):
                    break
                self.backlog.popleft()
                following.gpu_ids = leader.gpu_ids
                followers.append(following)
                room -= 1
            if followers:
                self.in_batches += len(followers) + 1
        return followers

    def _return_to_backlog(self, attempts: list[RunningAttempt]) -> None:
        """Attempts a batch did not start go back to the front of the backlog (released if the worker stops)."""
        with self.backlog_lock:
            self.in_batches -= len(attempts)
            self.backlog.extendleft(reversed(attempts))
        if self.stopping.is_set():
            self._release_backlog()
        self.finished.set()

    def _forget(self, running: RunningAttempt) -> None:
        with self.running_lock:
            self.running.pop(running.attempt_id, None)
        self.finished.set()

    def _give_back(self, claim: dict, note: str) -> None:
        log.warning("attempt %d (task %d): %s", claim["attempt_id"], claim["task_id"], note)
        run_transaction(self.engine, lambda connection: attempt_store.release(
            connection, claim["attempt_id"], claim["task_id"], time.time(), note), attempts=0,
            on_retry=self._database_retry)

    def _work_may_come(self) -> bool:
        """Burst mode: could anything still reach this worker (ready/queued tasks it runs, or running tasks)?"""
        names = sorted(self.types)

        return self._read(lambda connection: task_store.work_may_come(connection, names))

    def _release_backlog(self) -> None:
        """Give back the attempts claimed ahead that no slot started (not failures; they run elsewhere)."""
        with self.backlog_lock:
            waiting = list(self.backlog)
            self.backlog.clear()
        if not waiting:
            return
        me, now = self.record["id"], time.time()

        def body(connection):
            current = attempt_store.lock_owned(connection, [running.attempt_id for running in waiting], me)
            released = 0
            for running in waiting:
                released += len(attempt_store.release(connection, running.attempt_id, running.claim["task_id"], now,
                                                      SHUTDOWN_RELEASE_NOTE, current=current))
            return released

        try:
            released = run_transaction(self.engine, body, attempts=3)
            self.counts["released"] += released
            log.info("released %d attempt(s) claimed ahead and not started", released)
        except Exception as error:  # their leases expire and the scheduler gives them to other workers
            log.warning("could not release %d attempt(s) claimed ahead (%s); they are retried when their leases "
                        "expire", len(waiting), first_line(str(error))[:200])
        for running in waiting:
            self._forget(running)
