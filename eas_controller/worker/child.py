"""The reusable child process that runs ``python:`` implementations and QC checks (see :mod:`.pool`).

Started by the worker as ``python -c ... <socket fd>``; it imports nothing heavy itself, receives the
worker's ``sys.path`` first, then one request at a time. Its stdout and stderr are pipes the worker reads
line by line; everything the child writes is in them before its reply is sent, so the worker reads what is
left in the pipes after the reply and every line is attributed to the right attempt. A batch of short tasks
is one request with a reply per task; an end mark written to both pipes after each task separates their
output.

A task whose scratch folder was deferred (see :func:`execution.prepare`) gets it here on the first touch:
``ctx.work_dir``, reading ``EAS_WORK_DIR``, ``EAS_TASK_DESCRIPTION``, ``EAS_METADATA_IN`` or
``EAS_METADATA_OUT`` from ``os.environ``, ``os.getcwd()``, and, through an audit hook, opening or listing a
relative path or one inside the folder, changing directory, or starting a process. Until then the current
directory is the child's own.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys
import time
import traceback


#: Written to stdout and stderr after each task of a batch: what a pipe held before it is that task's output.
END_MARK = b"\x1e\x1fEAS-END-OF-TASK\x1f\x1e\n"
#: ``os.environ`` keys whose value is a path in the scratch folder: reading one makes the folder.
_SCRATCH_VARIABLES = frozenset(("EAS_WORK_DIR", "EAS_TASK_DESCRIPTION", "EAS_METADATA_IN", "EAS_METADATA_OUT"))
#: Audit events with a path first: a relative one, or one in the folder, makes it.
_PATH_EVENTS = frozenset(("open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir",
                          "os.symlink", "os.link", "os.chmod", "os.chown", "os.truncate", "os.utime", "os.chflags",
                          "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
                          "shutil.rmtree", "shutil.make_archive", "shutil.unpack_archive", "glob.glob", "tempfile.mkstemp",
                          "tempfile.mkdtemp"))
#: Audit events that hand the environment and current directory on, or change directory: they make it.
_ALWAYS_EVENTS = frozenset(("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork",
                            "os.forkpty", "os.chdir", "os.startfile", "pty.spawn"))


class _Scratch:
    """The deferred scratch folder of the running attempt, if any."""

    work_dir: str | None = None
    files: dict | None = None

    @classmethod
    def make(cls) -> None:
        """Create the folder and files now and make it the current directory (once per attempt)."""
        work_dir, files = cls.work_dir, cls.files
        if files is None:
            return
        cls.files = None  # first: the file operations below pass through the audit hook
        from eas_controller.worker.execution import make_work_dir, write_files

        make_work_dir(work_dir)
        write_files(files)
        os.chdir(work_dir)


def _audit(event: str, args: tuple) -> None:
    if _Scratch.files is None:
        return
    if event in _ALWAYS_EVENTS:
        _Scratch.make()
    elif event in _PATH_EVENTS and args:
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        try:
            path = os.fsdecode(path)
        except TypeError:
            return
        if not os.path.isabs(path) or path == _Scratch.work_dir or path.startswith(_Scratch.work_dir + os.sep):
            _Scratch.make()


class _ScratchEnviron(os._Environ):
    """``os.environ``, making the deferred folder when one of its paths is read."""

    def __getitem__(self, key):
        if _Scratch.files is not None and key in _SCRATCH_VARIABLES:
            _Scratch.make()
        return super().__getitem__(key)


def _install_scratch_hooks() -> None:
    os.environ.__class__ = _ScratchEnviron
    real_getcwd = os.getcwd

    def getcwd() -> str:
        _Scratch.make()
        return real_getcwd()

    os.getcwd = getcwd
    sys.addaudithook(_audit)


def main() -> None:
    from multiprocessing.connection import Connection

    connection = Connection(int(sys.argv[1]))
    init = connection.recv()
    sys.path[:] = init["sys_path"]
    sys.stdout.reconfigure(line_buffering=True)  # a pipe: print() lines would otherwise wait for 8 KiB
    _install_scratch_hooks()
    functions: dict = {}
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if request is None:
            return
        if request["kind"] == "batch":
            _run_batch(request["requests"], functions, connection)
            continue
        if request["kind"] == "qc":
            reply = _check_products(request, functions)
        else:
            reply = _run_task(request, functions)
        sys.stdout.flush()  # into the pipes before the reply: the worker reads them once it has the reply
        sys.stderr.flush()
        connection.send(reply)


def _run_batch(requests: list, functions: dict, connection) -> None:
    """Short tasks back to back, a reply after each; after each task an end mark in stdout and stderr
    tells the worker where that task's output ends (its reply may be read while the next one prints)."""
    for request in requests:
        reply = _run_task(request, functions)
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            try:
                os.write(fd, END_MARK)
            except OSError:  # the task closed it: the worker sees the pipe end instead
                pass
        connection.send(reply)


def _function(reference: str, functions: dict):
    function = functions.get(reference)
    if function is None:
        module_name, _, name = reference.partition(":")
        function = functions[reference] = getattr(importlib.import_module(module_name), name)
    return function


def _context_class():
    from eas_controller.task_api import TaskContext

    class ScratchContext(TaskContext):
        """``ctx``, making the deferred folder when ``ctx.work_dir`` is read."""

        @property
        def work_dir(self) -> str:
            _Scratch.make()
            return self.__dict__["work_dir"]

        @work_dir.setter
        def work_dir(self, value: str) -> None:
            self.__dict__["work_dir"] = value

    return ScratchContext


_contexts: list = []


def _run_task(request: dict, functions: dict) -> dict:
    from eas_controller.tasks.builtin import TaskFailure

    if not _contexts:
        _contexts.append(_context_class())
    saved_environment = dict(os.environ._data)  # encoded keys and values: a plain copy, no decoding, no hooks
    saved_directory = os.getcwd()
    usage_before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    error = None
    context = None
    try:
        os.environ.update(request["environment"])
        if request.get("deferred_files") is None:
            os.chdir(request["work_dir"])
        else:
            _Scratch.work_dir, _Scratch.files = request["work_dir"], request["deferred_files"]
        context = _contexts[0](request["environment"], request["description"], request["inputs"], request["outputs"],
                               request["metadata_in"], request.get("resources"))
        _function(request["target"], functions)(context)
    except TaskFailure as failure:
        error = str(failure) or failure.__class__.__name__
    except SystemExit as exit_request:
        if exit_request.code not in (None, 0):
            error = "the task called sys.exit(%r)" % (exit_request.code,)
    except BaseException:  # the whole traceback is the explanation the user needs
        error = traceback.format_exc()
    finally:
        _Scratch.files = None  # a folder the task never touched is never made
        os.chdir(saved_directory)
        _restore_environment(saved_environment)
    usage_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (usage_after[0].ru_utime + usage_after[0].ru_stime) - (usage_before[0].ru_utime + usage_before[0].ru_stime)
    children = (usage_after[1].ru_utime + usage_after[1].ru_stime) - (usage_before[1].ru_utime + usage_before[1].ru_stime)
    return dict(
        error=error, started_at=started, wall_s=time.time() - started, cpu_s=own, cpu_children_s=own + children,
        metadata=context.output_metadata if context and error is None else {},
        log_lines=context.log_lines if context else [],
    )


def _restore_environment(saved: dict) -> None:
    """Put back the environment as it was before the task (``saved``: ``os.environ._data`` then), touching
    only what changed: clearing and refilling the whole environment costs a libc call per variable, per
    task. Compared in the encoded form ``os.environ`` keeps, so nothing is decoded for what did not change."""
    current = os.environ._data
    decode = os.fsdecode
    for key in current.keys() - saved.keys():
        del os.environ[decode(key)]
    for key, value in saved.items():
        if current.get(key) != value:
            os.environ[decode(key)] = decode(value)


def _check_products(request: dict, functions: dict) -> dict:
    """Run the QC function on each product: {semantic type: [passed, message]}."""
    verdicts = {}
    for semantic, path in request["paths"].items():
        try:
            verdict = _function(request["target"], functions)(path)
            if isinstance(verdict, tuple):
                passed, message = bool(verdict[0]), (str(verdict[1]) if len(verdict) > 1 and verdict[1] else None)
            else:
                passed, message = bool(verdict), None
        except Exception as error:  # a QC check that crashes is a failed check, with the reason
            passed, message = False, "QC check %s raised %s: %s" % (request["target"], error.__class__.__name__, error)
        verdicts[semantic] = [passed, message]
    return dict(verdicts=verdicts)


if __name__ == "__main__":
    main()
