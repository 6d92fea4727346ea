"""Running one attempt in a child process, per the implementation contract.

The child receives ``EAS_TASK_ID``, ``EAS_ATTEMPT_ID``, ``EAS_TASK_DESCRIPTION``, ``EAS_INPUT_<TYPE>``,
``EAS_OUTPUT_<TYPE>``, ``EAS_METADATA_IN``, ``EAS_METADATA_OUT``, ``EAS_WORK_DIR`` and ``EAS_CPUS``.
``python:`` implementations run in a reusable child (see :mod:`.pool`); ``command:`` implementations
are a fresh ``/bin/sh -c`` in their own process group. Success = exit status 0 and every declared
output present. Output goes to files in the attempt's private folder and becomes log lines afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time

from eas_controller import products
from eas_controller.registry import TaskType

MAX_LOG_LINES_PER_STREAM = 20_000
MAX_LOG_LINE_LENGTH = 4_000
KILL_GRACE_S = 5.0


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
    log_lines: list = dataclasses.field(default_factory=list)  # (time, severity, stream, message)
    outputs: dict = dataclasses.field(default_factory=dict)  # semantic type -> staged path
    timed_out: bool = False


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
    stdout_path: str
    stderr_path: str
    description: dict

    @property
    def attempt_id(self) -> int:
        return self.claim["attempt_id"]


def _variable_name(prefix: str, semantic_type: str) -> str:
    cleaned = "".join(char if char.isalnum() else "_" for char in semantic_type.upper())
    return prefix + cleaned


def prepare(claim: dict, task_type: TaskType, data_dir: str) -> PreparedAttempt:
    """Make the attempt's private folder, its JSON files and its environment."""
    work_dir = os.path.join(data_dir, "scratch", "attempt_%d" % claim["attempt_id"])
    if os.path.exists(work_dir):
        shutil.rmtree(work_dir, ignore_errors=True)
    os.makedirs(work_dir)
    description = claim["description"]
    directory = claim["working_directory"] or ""
    inputs, outputs, final_outputs = {}, {}, {}
    for semantic, filename in (description.get("inputs") or {}).items():
        inputs[semantic] = products.product_path(data_dir, os.path.normpath(os.path.join(directory, filename)))
    for semantic, filename in (description.get("outputs") or {}).items():
        relative = os.path.normpath(os.path.join(directory, filename))
        outputs[semantic] = products.staging_path(work_dir, semantic, relative)
        final_outputs[semantic] = products.product_path(data_dir, relative)
        os.makedirs(os.path.dirname(outputs[semantic]), exist_ok=True)
    paths = {name: os.path.join(work_dir, name) for name in
             ("description.json", "metadata_in.json", "metadata_out.json", "stdout.log", "stderr.log")}
    with open(paths["description.json"], "w") as handle:
        json.dump(description, handle, indent=1)
    with open(paths["metadata_in.json"], "w") as handle:
        json.dump({"metadata": claim["metadata"], "requested_metadata": claim["requested_metadata"]}, handle, indent=1)
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
    for semantic, path in inputs.items():
        environment[_variable_name("EAS_INPUT_", semantic)] = path
    for semantic, path in outputs.items():
        environment[_variable_name("EAS_OUTPUT_", semantic)] = path
    return PreparedAttempt(
        claim=claim, task_type=task_type, work_dir=work_dir, environment=environment, inputs=inputs, outputs=outputs,
        final_outputs=final_outputs, description_path=paths["description.json"],
        metadata_in_path=paths["metadata_in.json"], metadata_out_path=paths["metadata_out.json"],
        stdout_path=paths["stdout.log"], stderr_path=paths["stderr.log"], description=description,
    )


def render_command(template: str, prepared: PreparedAttempt) -> str:
    """Fill ``{field}`` placeholders from the evaluated description; inputs/outputs give paths."""
    fields = dict(prepared.description)
    fields["inputs"] = prepared.inputs
    fields["outputs"] = prepared.outputs
    fields.setdefault("task_id", prepared.claim["task_id"])
    fields.setdefault("attempt_id", prepared.claim["attempt_id"])
    try:
        return template.format(**fields)
    except KeyError as error:
        raise ValueError("the command template %r needs field %s, which the task does not have" % (template, error)) from None
    except (IndexError, AttributeError, ValueError) as error:
        raise ValueError("the command template %r cannot be filled: %s" % (template, error)) from None


def read_log_lines(prepared: PreparedAttempt, when: float) -> list:
    lines = []
    for stream, path in (("stdout", prepared.stdout_path), ("stderr", prepared.stderr_path)):
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as handle:
            for count, line in enumerate(handle):
                if count >= MAX_LOG_LINES_PER_STREAM:
                    lines.append((when, "WARNING", "worker", "%s truncated after %d lines" % (stream, count)))
                    break
                severity = "INFO" if stream == "stdout" else "WARNING"
                lines.append((when, severity, stream, line.rstrip("\n")[:MAX_LOG_LINE_LENGTH]))
    return lines


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


def kill_process_group(process_group: int, grace_s: float = KILL_GRACE_S, wait=None) -> None:
    """SIGTERM the group, then SIGKILL it if anything is left after ``grace_s``."""
    try:
        os.killpg(process_group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if wait is not None and wait(0.1):
            break
        try:
            os.killpg(process_group, 0)
        except ProcessLookupError:
            return
        if wait is None:
            time.sleep(0.1)
    try:
        os.killpg(process_group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_command(prepared: PreparedAttempt, nice: int = 0, stop_event: threading.Event | None = None) -> Outcome:
    """Run a ``command:`` implementation under ``/bin/sh -c`` in its own process group."""
    try:
        command = render_command(prepared.task_type.target, prepared)
    except ValueError as error:
        return Outcome(succeeded=False, error_text=str(error))
    environment = dict(os.environ, **prepared.environment)
    started = time.time()
    with open(prepared.stdout_path, "wb") as stdout, open(prepared.stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command], cwd=prepared.work_dir, env=environment, stdout=stdout, stderr=stderr,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
    waited: dict = {}
    finished = threading.Event()

    def reap() -> None:
        _pid, status, usage = os.wait4(process.pid, 0)
        waited.update(status=status, usage=usage)
        finished.set()

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    timeout = prepared.task_type.timeout_s
    timed_out = False
    deadline = started + timeout if timeout else None
    while not finished.wait(0.5 if (deadline or stop_event) else None):
        if deadline and time.time() >= deadline:
            timed_out = True
            kill_process_group(process.pid, wait=finished.wait)
            break
        if stop_event is not None and stop_event.is_set():
            kill_process_group(process.pid, wait=finished.wait)
            break
    finished.wait()
    try:  # whatever the shell left behind in its group goes too
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.returncode = os.waitstatus_to_exitcode(waited["status"])
    usage = waited["usage"]
    cpu = usage.ru_utime + usage.ru_stime
    outcome = Outcome(
        succeeded=process.returncode == 0 and not timed_out, exit_status=process.returncode, wall_s=time.time() - started, cpu_s=cpu, cpu_children_s=cpu,
        timed_out=timed_out,
    )
    if timed_out:
        outcome.error_text = "timed out after %g s" % timeout
    elif process.returncode != 0:
        outcome.error_text = "command exited with status %d" % process.returncode
    return outcome
