"""``concurrent.futures`` executors: run importable Python functions as tasks on the EAS workers.

``with get_executor("eas") as ex: list(ex.map(f, xs))`` submits one ``python_function`` task per item (all
of a ``map`` in one transaction), and a background thread follows them: it runs scheduling passes (unless
told a scheduler daemon does that) and completes each future when its task finishes, in whatever order
they finish; ``map`` yields in input order. ``"sequential"`` and ``"multiprocessing"`` run the same code
without a database, as cluster_tools' strategies do, so a script can switch with one word.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from eas_controller import states
from eas_controller.api.jobs import Job, add_to_batch, engine_for, make_scheduler, resolve_settings, task_states
from eas_controller.config import Settings
from eas_controller.tasks.python_call import decode_result, encode_call, function_name, read_error

TASK_TYPE = "python_function"


class RemoteTraceback(Exception):
    """Carries the traceback printed on the worker; set as the ``__cause__`` of a re-raised exception."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return '\n"""\n%s"""' % self.text


class RemoteError(Exception):
    """The task failed without an exception this process can rebuild (lost worker, cancelled, unpicklable...)."""


class Executor(concurrent.futures.Executor):
    """Runs ``fn(*args, **kwargs)`` as EAS tasks. ``job_name``: the batch the tasks join (default: a new one
    per executor); ``schedule``: drive scheduling passes from this process (default True); ``priority``:
    the tasks' priority."""

    def __init__(
        self,
        settings: Settings | None = None,
        job_name: str | None = None,
        schedule: bool = True,
        poll_interval: float = 0.1,
        priority: int = 0,
    ):
        self.settings = resolve_settings(settings)
        self.engine = engine_for(self.settings)
        self.job_name = job_name or "executor-%s" % uuid.uuid4().hex[:10]
        self.schedule = schedule
        self.poll_interval = poll_interval
        self.priority = priority
        self.jobs: list[Job] = []
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._shutdown = False
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # -- submitting -------------------------------------------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        return self._submit_calls([(fn, args, kwargs)])[0]

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator:
        """Like :meth:`concurrent.futures.Executor.map`, but every call is submitted in one transaction."""
        futures = self._submit_calls([(fn, args, {}) for args in zip(*iterables)])
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator:
            try:
                for future in futures:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    yield future.result(remaining)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def _submit_calls(self, calls: list[tuple[Callable, tuple, dict]]) -> list[concurrent.futures.Future]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if not calls:
            return []
        task_list = [
            dict(task=TASK_TYPE, function=function_name(fn), call=encode_call(fn, args, kwargs), priority=self.priority)
            for fn, args, kwargs in calls
        ]
        job = add_to_batch({"task_list": task_list}, self.job_name, self.settings, source="executor")
        self.jobs.append(job)
        futures = []
        with self._lock:
            for task_id in job.task_ids:
                future: concurrent.futures.Future = concurrent.futures.Future()
                future.set_running_or_notify_cancel()  # queued in the database: it cannot be withdrawn from here
                self._pending[task_id] = future
                futures.append(future)
        self._start_follower()
        self._wakeup.set()
        return futures

    # -- following --------------------------------------------------------------------------------------------
    def _start_follower(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._follow, name="eas-executor", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        scheduler = make_scheduler(self.settings, self.engine) if self.schedule else None
        try:
            while True:
                with self._lock:
                    pending = dict(self._pending)
                if not pending:
                    if self._shutdown:
                        return
                    self._wakeup.wait(1.0)
                    self._wakeup.clear()
                    continue
                did_something = scheduler.run_pass().did_something if scheduler else False
                finished = {
                    task_id: state
                    for task_id, state in task_states(self.engine, pending).items()
                    if state in states.TASK_FINAL_STATES
                }
                if finished:
                    self._complete(finished, pending)
                elif not did_something:
                    time.sleep(self.poll_interval)
        except BaseException as error:  # the database went away for good: fail what is left, loudly
            self._failure = error
            with self._lock:
                pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(RemoteError("following the tasks failed: %s" % error))

    def _complete(self, finished: dict[int, str], pending: dict[int, concurrent.futures.Future]) -> None:
        from eas_controller.database.engine import read_transaction
        from eas_controller.reports import task_metadata

        with read_transaction(self.engine) as connection:
            metadata = task_metadata(
                connection, [task_id for task_id, state in finished.items() if state == states.DONE]
            )
        for task_id, state in finished.items():
            future = pending[task_id]
            try:
                if state == states.DONE:
                    future.set_result(decode_result(self.settings.data_dir, metadata.get(task_id, {})))
                else:
                    future.set_exception(self._exception_of(task_id, state))
            except Exception as error:  # e.g. a result that cannot be unpickled here
                future.set_exception(error)
            with self._lock:
                self._pending.pop(task_id, None)

    def _exception_of(self, task_id: int, state: str) -> BaseException:
        from eas_controller.api.jobs import latest_attempt

        if state == states.CANCELLED:
            return concurrent.futures.CancelledError("task %d was cancelled" % task_id)
        found = read_error(self.settings.data_dir, task_id)
        if found is not None and found[0] is not None:
            error, remote = found
            error.__cause__ = RemoteTraceback(remote)
            error.add_note("raised on an EAS worker by task %d; remote traceback:\n%s" % (task_id, remote.rstrip()))
            return error
        attempt = latest_attempt(self.engine, task_id)
        text = found[1] if found else (attempt.error_text if attempt is not None and attempt.error_text else "")
        return RemoteError("task %d %s: %s" % (task_id, state, text or "no error text recorded"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            self.cancel_pending()
        self._shutdown = True
        self._wakeup.set()
        if wait and self._thread is not None:
            self._thread.join()

    def cancel_pending(self) -> int:
        """Cancel the unfinished tasks of this executor's batch (as ``cancel_job.py --job-name``)."""
        from eas_controller import recovery
        from eas_controller.queues import make_queue

        queue = make_queue(self.settings, self.engine)
        try:
            return recovery.cancel(self.engine, queue, recovery.Selection(job_name=self.job_name))["tasks"]
        finally:
            queue.close()


class SequentialExecutor(concurrent.futures.Executor):
    """Runs each call at once, in this process: for debugging the same code without workers."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


def get_executor(name: str = "eas", **options: Any) -> concurrent.futures.Executor:
    """An executor by strategy name, as in cluster_tools: ``"eas"`` (tasks on the EAS workers; options go to
    :class:`Executor`), ``"sequential"``, ``"multiprocessing"`` (options go to ProcessPoolExecutor)."""
    if name == "eas":
        return Executor(**options)
    if name == "sequential":
        return SequentialExecutor()
    if name == "multiprocessing":
        return concurrent.futures.ProcessPoolExecutor(**options)
    if name == "slurm":
        raise NotImplementedError(
            "the 'slurm' strategy runs through EAS workers started as Slurm jobs "
            "(eas_controller/worker_orchestration/slurm_workers.py), which this installation does not provide yet; "
            "start workers on the cluster yourself and use get_executor('eas')"
        )
    raise ValueError("unknown executor %r; choose one of: eas, sequential, multiprocessing, slurm" % (name,))
