"""Running one attempt in a child process, per the implementation contract.

The child receives ``EAS_TASK_ID``, ``EAS_ATTEMPT_ID``, ``EAS_TASK_DESCRIPTION``, ``EAS_INPUT_<TYPE>``,
``EAS_OUTPUT_<TYPE>``, ``EAS_METADATA_IN``, ``EAS_METADATA_OUT``, ``EAS_WORK_DIR``, ``EAS_CPUS``,
``EAS_RESOURCE_<NAME>`` for its shared files and, on a worker with GPUs, ``EAS_GPUS`` and
``CUDA_VISIBLE_DEVICES``. Inputs, outputs and shared files given as URIs are local paths for the task too:
:mod:`.transfer` fetches them before it starts and uploads its URI outputs after it succeeded. ``python:`` implementations run in a
reusable child (see :mod:`.pool`); ``command:`` implementations are a fresh ``/bin/sh -c`` in their own
process group. Success = exit status 0 and every declared output present. Output is read from pipes as
it comes, so each log line carries the time it was printed. A timeout or a stop kills the whole process
group (SIGTERM, then SIGKILL after a grace period), and any descendant that left the group.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import time

from eas_controller import products, uris
from eas_controller.registry import TaskType
from eas_controller.worker.logs import LogBuffer, PipeLines, read_available

#: Seconds between SIGTERM and SIGKILL when a task is stopped or times out.
KILL_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children then outlive a worker killed with SIGKILL
    _prctl = None


@dataclasses.dataclass
class Outcome:
    """What an attempt produced, ready for the completion transaction."""

    succeeded: bool
    exit_status: int | None = None
    error_text: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_children_s: float = 0.0
    metadata: dict = dataclasses.field(default_factory=dict)
    log_lines: list = dataclasses.field(default_factory=list)  # (time, severity, stream, message), if no LogBuffer
    outputs: dict = dataclasses.field(default_factory=dict)  # semantic type -> staged path
    timed_out: bool = False
    stopped: bool = False  # stopped by the worker (shutdown, cancellation, lost ownership)
    failed_qc: bool = False
    started_at: float | None = None  # when the implementation started, where the child says (a batch)


@dataclasses.dataclass
class PreparedAttempt:
    """The files and environment of one attempt, made before it starts."""

    claim: dict
    task_type: TaskType
    work_dir: str
    environment: dict
    inputs: dict
    outputs: dict  # semantic type -> staging path
    final_outputs: dict  # semantic type -> product path
    description_path: str
    metadata_in_path: str
    metadata_out_path: str
    stdout_path: str = ""  # unused: output is streamed into ``logs``
    stderr_path: str = ""
    description: dict = dataclasses.field(default_factory=dict)
    logs: LogBuffer = dataclasses.field(default_factory=LogBuffer)
    data_dir: str = ""
    #: For a ``python:`` task whose folder is made on first use (see :func:`prepare`): {file path: its text}.
    #: None once the folder and files exist.
    deferred_files: dict | None = None
    remote_inputs: dict = dataclasses.field(default_factory=dict)  # semantic type -> URI, fetched to inputs[...]
    fetched: dict = dataclasses.field(default_factory=dict)  # semantic type -> {uri, identity} of what was fetched
    resource_files: dict = dataclasses.field(default_factory=dict)  # name -> shared file (URI[|gunzip])
    resources: dict = dataclasses.field(default_factory=dict)  # name -> local path of the fetched shared file
    transfer: object = None  # the worker's :class:`~eas_controller.worker.transfer.Transfer`, once fetched

    @property
    def attempt_id(self) -> int:
        return self.claim["attempt_id"]


def variable_name(prefix: str, semantic_type: str) -> str:
    cleaned = "".join(char if char.isalnum() else "_" for char in semantic_type.upper())
    return prefix + cleaned


def make_work_dir(work_dir: str) -> None:
    """Create an attempt's scratch folder, empty (a leftover of an earlier, cut-off run of it is removed)."""
    try:
        os.mkdir(work_dir)  # the common case in one system call: short tasks spend a good part of their time here
    except FileExistsError:  # left by an earlier run of this attempt that was cut off
        shutil.rmtree(work_dir, ignore_errors=True)
        os.makedirs(work_dir)
    except FileNotFoundError:  # the first attempt under this data directory
        os.makedirs(work_dir)


def write_files(files: dict) -> None:
    """The attempt's JSON files, one write each (json.dumps without indent runs in C)."""
    for path, text in files.items():
        with open(path, "w") as handle:
            handle.write(text)


def remote_inputs_of(description: dict) -> dict:
    """The inputs given as URIs (semantic type -> URI): fetched into the attempt's folder before it starts."""
    return {semantic: uri for semantic, uri in (description.get("inputs") or {}).items() if uris.is_uri(uri)}


def defers_folder(task_type: TaskType, description: dict, remote_inputs: dict) -> bool:
    """Whether the attempt's folder and files wait until the task uses them (see :func:`prepare`)."""
    return task_type.kind == "python" and not description.get("outputs") and not remote_inputs


def resource_files_of(task_type: TaskType, description: dict) -> dict:
    """The shared files (``resources.files``) of an attempt: its type's, with the task's own entries winning."""
    resource_files = dict(task_type.files)
    own = description.get("resources")
    if isinstance(own, dict) and isinstance(own.get("files"), dict):
        resource_files.update(own["files"])
    return resource_files


def batchable(claim: dict, task_type: TaskType) -> bool:
    """Whether an attempt can run in a batch of short ``python:`` tasks: nothing to set up before it starts
    (its folder is deferred, and it has no shared files to fetch)."""
    description = claim["description"]
    return (defers_folder(task_type, description, remote_inputs_of(description))
            and not resource_files_of(task_type, description))


def prepare(claim: dict, task_type: TaskType, data_dir: str, gpu_ids: list[str] | None = None,
            logs: LogBuffer | None = None) -> PreparedAttempt:
    """Make the attempt's private folder, its JSON files and its environment.

    ``gpu_ids``: the devices this attempt may use, or None on a worker without GPUs.

    A ``python:`` task without declared outputs gets its folder and files only when it uses them: the
    reusable child makes them on the first touch (``ctx.work_dir``, reading one of their ``EAS_*`` variables,
    the current directory, a file operation on a relative path or inside the folder, starting a process).
    On this disk the folder, its two files and their removal cost ~1-2 ms of a slot's time, more than a
    short task itself; most ``python:`` tasks read everything from ``ctx`` and never touch them.
    """
    work_dir = os.path.join(data_dir, "scratch", "attempt_%d" % claim["attempt_id"])
    description = claim["description"]
    remote_inputs = remote_inputs_of(description)
    deferred = defers_folder(task_type, description, remote_inputs)
    if not deferred:
        make_work_dir(work_dir)
    directory = claim["working_directory"] or ""
    inputs, outputs, final_outputs = {}, {}, {}
    for semantic, filename in (description.get("inputs") or {}).items():
        if semantic in remote_inputs:  # fetched here before the task starts
            inputs[semantic] = os.path.join(work_dir, "inputs", semantic, uris.basename(filename))
        else:
            inputs[semantic] = products.product_path(data_dir, os.path.normpath(os.path.join(directory, filename)))
    for semantic, filename in (description.get("outputs") or {}).items():
        if uris.is_uri(filename):  # written here, uploaded on success
            relative, final_outputs[semantic] = uris.basename(filename), filename
        else:
            relative = os.path.normpath(os.path.join(directory, filename))
            final_outputs[semantic] = products.product_path(data_dir, relative)
        outputs[semantic] = products.staging_path(work_dir, semantic, relative)
        os.makedirs(os.path.dirname(outputs[semantic]), exist_ok=True)
    resource_files = resource_files_of(task_type, description)
    paths = {name: os.path.join(work_dir, name) for name in
             ("description.json", "metadata_in.json", "metadata_out.json")}
    files = {paths["description.json"]: json.dumps(description),
             paths["metadata_in.json"]: json.dumps({"metadata": claim["metadata"],
                                                    "requested_metadata": claim["requested_metadata"]})}
    if not deferred:
        write_files(files)
    environment = {
        "EAS_TASK_ID": str(claim["task_id"]),
        "EAS_ATTEMPT_ID": str(claim["attempt_id"]),
        "EAS_TASK_DESCRIPTION": paths["description.json"],
        "EAS_METADATA_IN": paths["metadata_in.json"],
        "EAS_METADATA_OUT": paths["metadata_out.json"],
        "EAS_WORK_DIR": work_dir,
        "EAS_CPUS": str(max(1, int(math.ceil(task_type.cpu)))),
        "EAS_DATA_DIR": data_dir,
    }
    if gpu_ids is not None:
        environment["EAS_GPUS"] = str(len(gpu_ids))
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    for semantic, path in inputs.items():
        environment[variable_name("EAS_INPUT_", semantic)] = path
    for semantic, path in outputs.items():
        environment[variable_name("EAS_OUTPUT_", semantic)] = path
    return PreparedAttempt(
        claim=claim, task_type=task_type, work_dir=work_dir, environment=environment, inputs=inputs, outputs=outputs,
        final_outputs=final_outputs, description_path=paths["description.json"],
        metadata_in_path=paths["metadata_in.json"], metadata_out_path=paths["metadata_out.json"],
        description=description, logs=logs if logs is not None else LogBuffer(), data_dir=data_dir,
        deferred_files=files if deferred else None, remote_inputs=remote_inputs, resource_files=resource_files,
    )


def render_command(template: str, prepared: PreparedAttempt) -> str:
    """Fill ``{field}`` placeholders from the evaluated description; inputs/outputs give paths."""
    fields = dict(prepared.description)
    fields["inputs"] = prepared.inputs
    fields["outputs"] = prepared.outputs
    fields["resources"] = prepared.resources
    fields.setdefault("task_id", prepared.claim["task_id"])
    fields.setdefault("attempt_id", prepared.claim["attempt_id"])
    try:
        return template.format(**fields)
    except KeyError as error:
        raise ValueError("the command template %r needs field %s, which the task does not have" % (template, error)) from None
    except (IndexError, AttributeError, ValueError) as error:
        raise ValueError("the command template %r cannot be filled: %s" % (template, error)) from None


def read_output_metadata(prepared: PreparedAttempt) -> tuple[dict, str | None]:
    """The JSON object the task wrote to EAS_METADATA_OUT, or an error text."""
    if not os.path.exists(prepared.metadata_out_path) or os.path.getsize(prepared.metadata_out_path) == 0:
        return {}, None
    try:
        with open(prepared.metadata_out_path) as handle:
            value = json.load(handle)
    except (OSError, ValueError) as error:
        return {}, "EAS_METADATA_OUT is not valid JSON: %s" % error
    if not isinstance(value, dict):
        return {}, "EAS_METADATA_OUT must hold a JSON object, not %s" % type(value).__name__
    return value, None


def check_outputs(prepared: PreparedAttempt) -> str | None:
    missing = [semantic for semantic, path in prepared.outputs.items() if not os.path.isfile(path)]
    if missing:
        return "declared output(s) not written: %s" % ", ".join(
            "%s (%s)" % (semantic, os.path.basename(prepared.final_outputs[semantic])) for semantic in missing)
    return None




def child_setup(nice: int):
    """What a reusable child does between fork and exec: lower its priority, die with the worker."""

    def setup() -> None:
        if nice:
            os.nice(nice)
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup


def descendants(pid: int) -> list:
    """The processes below ``pid`` now (psutil objects), including any that left its process group."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_tree(pid: int, grace_s: float, has_exited) -> None:
    """Stop a task: SIGTERM its process group (``pid`` leads it) and its descendants, SIGKILL what is left
    after ``grace_s``. ``has_exited()`` reaps the leader and says whether it is gone."""
    import psutil

    family = descendants(pid)

    def signal_all(number: int) -> None:
        try:
            os.killpg(pid, number)
        except (ProcessLookupError, PermissionError):
            pass
        for process in family:
            try:
                process.send_signal(number)  # checks the process is still the one we saw (pid reuse)
            except psutil.Error:
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if has_exited() and not any(_alive(process) for process in family):
            break
        time.sleep(0.05)
    signal_all(signal.SIGKILL)


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _Reaper:
    """Waits for one child without blocking the caller's loop (a pidfd where the kernel has one)."""

    def __init__(self, pid: int, selector: selectors.BaseSelector):
        self.pid = pid
        self.status = self.usage = None
        self.pidfd = None
        try:
            self.pidfd = os.pidfd_open(pid)
            selector.register(self.pidfd, selectors.EVENT_READ, None)
        except (AttributeError, OSError):
            self.pidfd = None

    def poll(self) -> bool:
        if self.status is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.status, self.usage = status, usage
        return self.status is not None

    def close(self, selector: selectors.BaseSelector) -> None:
        if self.pidfd is not None:
            selector.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


def run_command(prepared: PreparedAttempt, nice: int = 0, stop_event=None) -> Outcome:
    """Run a ``command:`` implementation under ``/bin/sh -c`` in its own process group.

    One loop in the calling thread reads stdout and stderr as they come, notices the exit (pidfd), the
    timeout and ``stop_event`` (anything with ``is_set()``); no thread per task.
    """
    try:
        command = render_command(prepared.task_type.target, prepared)
    except ValueError as error:
        return Outcome(succeeded=False, error_text=str(error))
    environment = dict(os.environ, **prepared.environment)
    environment.setdefault("PYTHONUNBUFFERED", "1")  # Python scripts print their lines when they happen
    sink = prepared.logs
    started = time.time()
    # No preexec_fn: it would force a full fork of the worker (~10 ms a task) instead of vfork; the
    # niceness is applied right after the start instead.
    process = subprocess.Popen(
        ["/bin/sh", "-c", command], cwd=prepared.work_dir, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, process.pid, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except OSError:
            pass
    selector = selectors.DefaultSelector()
    pipes = {}
    for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
        os.set_blocking(pipe.fileno(), False)
        pipes[pipe.fileno()] = pipe
        selector.register(pipe.fileno(), selectors.EVENT_READ, PipeLines(stream))
    reaper = _Reaper(process.pid, selector)
    timeout = prepared.task_type.timeout_s
    deadline = started + timeout if timeout else None
    timed_out = stopped = False
    idle = 0.01
    try:
        while not reaper.poll():
            wait = 0.5 if reaper.pidfd is not None or pipes else idle
            if deadline:
                wait = max(0.0, min(wait, deadline - time.time()))
            events = selector.select(wait)
            _read_pipes(events, selector, pipes, sink)
            if not events:
                idle = min(0.5, idle * 2)
            if reaper.poll():
                break
            if deadline and time.time() >= deadline:
                timed_out = True
            elif stop_event is not None and stop_event.is_set():
                stopped = True
            if timed_out or stopped:
                kill_tree(process.pid, KILL_GRACE_S, reaper.poll)
                while not reaper.poll():
                    time.sleep(0.05)
                break
        try:  # whatever the shell left behind in its group goes too
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        drain_until = time.time() + 2.0  # the rest of the output, unless an escaped process holds the pipes
        while pipes and time.time() < drain_until:
            _read_pipes(selector.select(0.1), selector, pipes, sink)
    finally:
        reaper.close(selector)
        for fd in list(pipes):
            selector.unregister(fd)
            pipes.pop(fd).close()
        selector.close()
    process.returncode = os.waitstatus_to_exitcode(reaper.status)
    usage = reaper.usage
    cpu = usage.ru_utime + usage.ru_stime
    outcome = Outcome(
        succeeded=process.returncode == 0 and not (timed_out or stopped), exit_status=process.returncode,
        wall_s=time.time() - started, cpu_s=cpu, cpu_children_s=cpu, timed_out=timed_out, stopped=stopped,
    )
    if timed_out:
        outcome.error_text = "timed out after %g s" % timeout
    elif stopped:
        outcome.error_text = "stopped by the worker"
    elif process.returncode < 0:
        outcome.error_text = "command was killed by signal %d (%s)" % (-process.returncode, _signal_name(-process.returncode))
    elif process.returncode != 0:
        outcome.error_text = "command exited with status %d" % process.returncode
    return outcome


def _read_pipes(events, selector, pipes: dict, sink: LogBuffer) -> None:
    for key, _mask in events:
        if key.data is None:  # the pidfd: the process exited
            continue
        data = read_available(key.fd)
        if data is None:
            continue
        if data:
            key.data.feed(data, sink)
        else:
            key.data.finish(sink)
            selector.unregister(key.fd)
            pipes.pop(key.fd).close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"
