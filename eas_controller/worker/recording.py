"""Recording: a recorder thread writes results as they come, several per fenced transaction when several
finished together (:func:`eas_controller.worker.completion.record_outcomes`)."""

from __future__ import annotations

import logging
import queue as queue_module
import time

from eas_controller import states
from eas_controller.database.engine import run_transaction
from eas_controller.store import attempts as attempt_store
from eas_controller.store import logs as log_store
from eas_controller.worker import completion
from eas_controller.worker.attempt import RunningAttempt, first_line

log = logging.getLogger("eas.worker")

#: At most this many results are recorded in one transaction.
MAX_GROUP = 100
#: While attempts claimed ahead wait for a slot, the recorder waits this long before taking what finished, so
#: that one transaction records many short tasks (fewer statements and commits per task, on both sides).
#: A lone task, or the last of a batch, is recorded at once.
GROUP_LINGER_S = 0.05


class RecordingMixin:
    """The :class:`~eas_controller.worker.service.Worker`'s recorder thread."""

    def _record_loop(self) -> None:
        """Record results as they come; what finished while the previous transaction ran goes in the next one."""
        while True:
            first = self.completions.get()
            if first is None:
                return
            group, stop = [first], False
            if self._more_results_coming() and self.completions.qsize() < MAX_GROUP - 1:
                time.sleep(GROUP_LINGER_S)  # short tasks follow: let a few more finish and share the transaction
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

    def _more_results_coming(self) -> bool:
        """Whether attempts claimed ahead are waiting for a slot: then more results follow within moments."""
        return bool(self.backlog or self.in_batches) and not self.stopping.is_set()

    def _record(self, group: list) -> None:
        """One fenced transaction for the whole group; if it fails for a reason retrying cannot mend (bad data),
        each attempt is recorded alone, and one that still fails is recorded as failed with the reason."""
        for running, _item in group:
            running.recording = True
        queue = self.queue if self.queue.in_database else None
        items = [item for _running, item in group]

        def body(connection):
            return completion.record_outcomes(connection, self.record, items, self.policy, queue)

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
        item.outcome.error_text = "the worker could not record the result: %s" % first_line(str(error))
        item.outcome.log_lines = [(time.time(), "ERROR", "worker", item.outcome.error_text)]
        return run_transaction(self.engine, lambda connection: completion.record_outcomes(
            connection, self.record, [item], self.policy, queue)[0],
            attempts=0, on_retry=self._database_retry)

    def _report_lost(self, running: RunningAttempt) -> None:
        """Say once, in the worker's log and the attempt's, that this run's results were discarded."""
        if running.lost == "reported":
            return
        attempt_id, task_id = running.attempt_id, running.claim["task_id"]
        reason = running.lost

        def body(connection):
            state = reason or attempt_store.state_of(connection, attempt_id)
            if state == states.A_CANCELLED:
                message = "attempt %d was cancelled while it ran: the worker stopped it and discarded its results" % attempt_id
            else:
                message = ("lost ownership of attempt %d (task %d): %s; the results of this run were discarded" % (
                    attempt_id, task_id, state if reason else "it is now %s (its lease expired and the task was given "
                    "to another attempt)" % state))
            log_store.write_lines(connection, attempt_id, task_id, [(time.time(), "WARNING", "worker", message)])
            return message

        running.lost = "reported"
        try:
            log.warning(run_transaction(self.engine, body, attempts=0, on_retry=self._database_retry))
        except Exception as error:
            log.warning("lost ownership of attempt %d; the note could not be stored: %s", attempt_id, error)
