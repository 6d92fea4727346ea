"""The ``python_function`` task type: call an importable function on a worker and keep what it returned.

The :class:`eas_controller.api.Executor` puts the function (by reference: module and qualified name) and
its arguments, pickled, into the task's ``call`` field. A small return value comes back as output metadata
(``result``, base64 pickle), a large one as a file under the data directory (``result_file``), so that the
metadata table stays narrow. An exception is pickled to a file with its traceback before the attempt fails,
so the caller can raise the same exception with the remote traceback attached.
"""

from __future__ import annotations

import base64
import os
import pickle
import tempfile
import traceback
from typing import Any, Callable

from eas_controller.tasks.builtin import TaskFailure

#: Pickled results up to this size travel as metadata; larger ones as files.
SMALL_RESULT_BYTES = 16 * 1024
RESULTS_FOLDER = "executor_results"


def encode_call(function: Callable, args: tuple, kwargs: dict) -> str:
    """The ``call`` field for ``function(*args, **kwargs)``; the function must be importable by the workers."""
    module = getattr(function, "__module__", None)
    if module in (None, "__main__") or "<locals>" in getattr(function, "__qualname__", "<locals>"):
        raise TypeError(
            "%r cannot run on a worker: only functions importable by name (defined at the top level of "
            "a module the workers can import, not in __main__ or inside another function) can" % (function,)
        )
    return base64.b64encode(pickle.dumps((function, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def function_name(function: Callable) -> str:
    return "%s:%s" % (getattr(function, "__module__", "?"), getattr(function, "__qualname__", repr(function)))


def result_path(data_dir: str, task_id: int, kind: str) -> str:
    """Where a large result (``kind`` "result") or an exception ("error") of a task is kept."""
    return os.path.join(data_dir, RESULTS_FOLDER, "task_%d.%s.pickle" % (task_id, kind))


def _write_atomically(path: str, payload: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".partial-")
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(payload)
    os.replace(temporary, path)


def run(ctx) -> None:
    data_dir = os.environ.get("EAS_DATA_DIR", ctx.work_dir)
    try:
        function, args, kwargs = pickle.loads(base64.b64decode(ctx.description["call"]))
    except Exception as error:
        raise TaskFailure(
            "cannot load the function call of %s: %s: %s"
            % (ctx.description.get("function", "this task"), error.__class__.__name__, error)
        ) from None
    try:
        value = function(*args, **kwargs)
    except Exception as error:
        remote = traceback.format_exc()
        try:
            payload = pickle.dumps((error, remote), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an exception that cannot be pickled still reaches the caller as text
            payload = pickle.dumps((None, remote), protocol=pickle.HIGHEST_PROTOCOL)
        _write_atomically(result_path(data_dir, ctx.task_id, "error"), payload)
        raise TaskFailure(remote.rstrip()) from None
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) <= SMALL_RESULT_BYTES:
        ctx.set_metadata("result", base64.b64encode(payload).decode("ascii"))
    else:
        path = result_path(data_dir, ctx.task_id, "result")
        _write_atomically(path, payload)
        ctx.set_metadata("result_file", os.path.relpath(path, data_dir))
        ctx.set_metadata("result_bytes", len(payload))


def decode_result(data_dir: str, metadata: dict) -> Any:
    """The value a finished ``python_function`` task returned, from its output metadata."""
    if "result" in metadata:
        return pickle.loads(base64.b64decode(metadata["result"]))
    if "result_file" in metadata:
        with open(os.path.join(data_dir, metadata["result_file"]), "rb") as handle:
            return pickle.loads(handle.read())
    raise KeyError("the task recorded no result")


def read_error(data_dir: str, task_id: int) -> tuple[BaseException | None, str] | None:
    """(exception or None, remote traceback text) of a failed task, or None if it left none."""
    path = result_path(data_dir, task_id, "error")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        try:
            return pickle.loads(handle.read())
        except Exception as error:  # the exception class is not importable here
            return None, "(the remote exception could not be unpickled here: %s)" % error
