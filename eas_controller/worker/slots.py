"""Slots: one thread per slot runs attempts from the backlog in a child process, checks their outputs and
hands the result to the recorder; a cleaner thread removes scratch folders off the busy threads. Short
``python:`` attempts of one type go to the child several at a time (see :meth:`ClaimingMixin._take_followers`)."""

from __future__ import annotations

import logging
import shutil
import time
import traceback

from eas_controller import metrics, states
from eas_controller.worker import completion, transfer
from eas_controller.worker.attempt import RunningAttempt, first_line
from eas_controller.worker.execution import Outcome, PreparedAttempt, prepare, run_command
from eas_controller.worker.pool import PythonChild

log = logging.getLogger("eas.worker")


class SlotsMixin:
    """The :class:`~eas_controller.worker.service.Worker`'s slot threads."""

    def _slot(self) -> None:
        child = PythonChild(self.nice)
        following = None  # the next attempt, taken from the backlog by this slot itself
        try:
            if any(task_type.kind == "python" for task_type in self.types.values()):
                child.start_ahead()
            while True:
                running = following or self.work.get()
                if running is None:
                    return
                try:
                    followers = self._take_followers(running)
                    if followers:
                        self._run_batch([running] + followers, child)
                    else:
                        self._run_one(running, child)
                finally:
                    self.capacity.give_back(running.task_type, running.gpu_ids)
                    following = self._take_from_backlog()
                    if following is None or len(self.backlog) <= self.refill_at:
                        self.finished.set()  # the main thread claims, or hands out what this slot could not take
        finally:
            child.close()

    def _run_one(self, running: RunningAttempt, child: PythonChild) -> None:
        handed_over = False
        try:
            handed_over = self._run_attempt(running, child)
        except Exception:
            log.exception("attempt %d: unexpected error in the worker", running.attempt_id)
        finally:
            if not handed_over:
                self._forget(running)

    def _run_attempt(self, running: RunningAttempt, child: PythonChild) -> bool:
        """Run one attempt and check its outputs; True once its result is handed to the recorder."""
        claim, task_type, logs = running.claim, running.task_type, running.logs
        running.started_at = time.time()
        prepared = None
        try:
            prepared = prepare(claim, task_type, self.settings.data_dir, running.gpu_ids, logs)
            transfer.fetch_for_attempt(prepared, self.transfer)
            if task_type.kind == "python":
                outcome = child.run(prepared, _metadata_in(claim), running)
            else:
                outcome = run_command(prepared, self.nice, running)
        except transfer.TransferError as error:  # an input or shared file could not be fetched: the reason, no traceback
            outcome = Outcome(succeeded=False, error_text=str(error))
        except Exception:  # the worker could not start or watch the task: fail the attempt with the reason
            outcome = Outcome(succeeded=False, error_text="the worker could not run the task:\n" + traceback.format_exc())
        return self._conclude(running, prepared, outcome, child)

    def _run_batch(self, batch: list[RunningAttempt], child: PythonChild) -> None:
        """Short ``python:`` attempts of one type in one request to the child (:meth:`PythonChild.run_batch`):
        each still its own attempt, with its own start, timings, output and result. What a timeout, a stop
        or a crash left unstarted goes back to the front of the backlog."""
        try:
            items = [(prepare(running.claim, running.task_type, self.settings.data_dir, running.gpu_ids, running.logs),
                      _metadata_in(running.claim), running) for running in batch]
        except Exception:  # one by one, each failing with its own reason
            with self.backlog_lock:
                self.in_batches -= len(batch)
            for running in batch:
                self._run_one(running, child)
            return
        concluded = 0
        try:
            for running in batch:
                running.started_at = time.time()
            for index, outcome in child.run_batch(items):
                running, concluded = batch[index], index + 1
                running.started_at = outcome.started_at or running.started_at
                with self.backlog_lock:
                    self.in_batches -= 1
                handed_over = False
                try:
                    handed_over = self._conclude(running, items[index][0], outcome, child)
                except Exception:
                    log.exception("attempt %d: unexpected error in the worker", running.attempt_id)
                if not handed_over:
                    self._forget(running)
        except Exception:
            log.exception("a batch of %d attempts: unexpected error in the worker; the rest run one by one",
                          len(batch))
            for running in batch[concluded:]:
                running.alone = True
        finally:
            self.transactions["batches"] += 1
            self.transactions["batched"] += concluded
            if concluded < len(batch):
                self._return_to_backlog(batch[concluded:])

    def _conclude(self, running: RunningAttempt, prepared, outcome: Outcome, child: PythonChild) -> bool:
        """Check the outputs of a run and hand the result to the recorder; True once it is handed over."""
        if running.lost:  # the heartbeat found it taken away and stopped it: nothing of this run is kept
            self._finished(running, prepared, outcome, completion.LOST)
            return False
        item = self._check(running, prepared, outcome, child)
        took = time.time() - running.started_at
        name = running.task_type.name
        previous = self.durations.get(name)
        self.durations[name] = took if previous is None else 0.8 * previous + 0.2 * took
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
                 result, outcome.wall_s, "" if result != states.A_FAILED else ": " + first_line(outcome.error_text))
        if prepared is not None and prepared.work_dir and (not self.keep_scratch or result == completion.LOST):
            self.trash.put(prepared.work_dir)

    def _clean_loop(self) -> None:
        while True:
            path = self.trash.get()
            if path is None:
                return
            shutil.rmtree(path, ignore_errors=True)


def _metadata_in(claim: dict) -> dict:
    return {"metadata": claim["metadata"], "requested_metadata": claim["requested_metadata"]}


def _bare_prepared(running: RunningAttempt, data_dir: str) -> PreparedAttempt:
    return PreparedAttempt(claim=running.claim, task_type=running.task_type, work_dir="", environment={}, inputs={},
                           outputs={}, final_outputs={}, description_path="", metadata_in_path="", metadata_out_path="",
                           logs=running.logs, data_dir=data_dir)
