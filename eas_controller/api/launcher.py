"""Shell commands as tasks: what ``launch.py`` does, callable from Python too.

Each command becomes a ``shell`` task. Task types carry the resources in this design (workers claim by
type), so a command launched with its own ``--cpus/--gpus/--memory-gb`` runs as a derived shell type named
for them (``shell_cpu4_gpu0_mem2``), registered on first use; a worker serving every type runs it when it
fits. The derived type's template exports ``EAS_GPUS`` and ``EAS_MEMORY_GB`` for the command
(``EAS_CPUS`` comes from the worker, as for every task).
"""

from __future__ import annotations

import re
import shlex
import sys
import time

from eas_controller import states
from eas_controller.api.jobs import Job, add_to_batch, engine_for, latest_attempt, log_lines_after, make_scheduler
from eas_controller.config import Settings
from eas_controller.registry import TaskType

BASE_TYPE = "shell"
#: The shipped shell type's needs, used for whatever the launch does not say.
DEFAULT_CPUS, DEFAULT_GPUS, DEFAULT_MEMORY_GB = 1.0, 0, 0.5


class LaunchError(ValueError):
    """Bad launcher input; the message names the flag or line."""


def commands_from_text(text: str, where: str) -> list[str]:
    """One command per non-blank line; lines starting with # are comments."""
    commands = [line.strip() for line in text.splitlines()]
    commands = [line for line in commands if line and not line.startswith("#")]
    if not commands:
        raise LaunchError("%s holds no command (one per line; # starts a comment)" % where)
    return commands


def parse_files(values: list[str], default_type: str, flag: str) -> dict[str, str]:
    """``[TYPE=]FILE`` values -> {semantic type: file}; unnamed ones are ``output``, ``output_2``..."""
    result: dict[str, str] = {}
    for position, value in enumerate(values, start=1):
        semantic, separator, filename = value.partition("=")
        if not separator:
            semantic, filename = default_type if position == 1 else "%s_%d" % (default_type, position), value
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", semantic):
            raise LaunchError("%s %r: the type before '=' must be a name of letters, digits and _" % (flag, value))
        if not filename.strip():
            raise LaunchError("%s %r: no file name" % (flag, value))
        if semantic in result:
            raise LaunchError("%s: type %r is given twice" % (flag, semantic))
        result[semantic] = filename
    return result


def _number_label(value: float) -> str:
    return ("%g" % value).replace(".", "p")


def task_type_for(settings: Settings, cpus: float | None, gpus: int | None, memory_gb: float | None) -> str:
    """``shell`` when no resource is asked for, else the derived shell type (registered if new)."""
    if cpus is None and gpus is None and memory_gb is None:
        return BASE_TYPE
    cpus = DEFAULT_CPUS if cpus is None else cpus
    gpus = DEFAULT_GPUS if gpus is None else gpus
    memory_gb = DEFAULT_MEMORY_GB if memory_gb is None else memory_gb
    if cpus <= 0:
        raise LaunchError("--cpus must be positive, not %g" % cpus)
    if gpus < 0:
        raise LaunchError("--gpus must not be negative, not %d" % gpus)
    if memory_gb < 0:
        raise LaunchError("--memory-gb must not be negative, not %g" % memory_gb)
    name = "shell_cpu%s_gpu%d_mem%s" % (_number_label(cpus), gpus, _number_label(memory_gb))
    template = "export EAS_GPUS=${{EAS_GPUS:-%d}} EAS_MEMORY_GB=%g; {command}" % (gpus, memory_gb)
    wanted = TaskType(
        name=name, kind="command", target=template, cpu=cpus, gpu=gpus, memory_gb=memory_gb, source="launch.py"
    )
    from eas_controller.database.engine import read_transaction, write_transaction
    from eas_controller.registry import load_registry, store_registry

    engine = engine_for(settings)
    with read_transaction(engine) as connection:
        known = load_registry(connection).get(name)
    if known is None or (known.kind, known.target, known.cpu, known.gpu, known.memory_gb) != (
        wanted.kind,
        wanted.target,
        wanted.cpu,
        wanted.gpu,
        wanted.memory_gb,
    ):
        with write_transaction(engine) as connection:
            store_registry(connection, {name: wanted})
    return name


def _literal(command: str) -> str:
    """Task-chain strings starting with ( ' or " are expressions; a leading space keeps a command literal."""
    return " " + command if command[:1] in ("(", "'", '"') else command


def add_commands(
    settings: Settings,
    commands: list[str | list[str]],
    batch: str,
    name: str | None = None,
    cpus: float | None = None,
    gpus: int | None = None,
    memory_gb: float | None = None,
    inputs: dict[str, str] | None = None,
    outputs: dict[str, str] | None = None,
    priority: int = 0,
) -> tuple[Job, list[int]]:
    """Add one shell task per command (a string, or a list of arguments to quote) to ``batch``, in one
    transaction; returns the job and the new task ids in order."""
    task_type = task_type_for(settings, cpus, gpus, memory_gb)
    task_list = []
    for position, command in enumerate(commands):
        text = shlex.join(command) if isinstance(command, list) else command
        task = {"task": task_type, "command": _literal(text), "priority": priority}
        if name:
            task["name"] = name if len(commands) == 1 else "%s_%d" % (name, position + 1)
        if inputs:
            task["inputs"] = dict(inputs)
        if outputs:
            if len(commands) > 1:
                raise LaunchError("-o names one file; it cannot be the output of %d commands" % len(commands))
            task["outputs"] = dict(outputs)
        task_list.append(task)
    job = add_to_batch({"task_list": task_list}, batch, settings, source="launch.py")
    return job, job.task_ids


def wait_for_task(
    settings: Settings,
    task_id: int,
    schedule: bool = True,
    poll_interval: float = 0.2,
    stream: bool = True,
    out=None,
    err=None,
) -> int:
    """Follow a task to its end, printing its log lines as they are recorded; returns its exit status
    (that of its last attempt; 1 if it failed without one, e.g. a lost worker or a timeout; 130 if cancelled)."""
    out = out or sys.stdout
    err = err or sys.stderr
    engine = engine_for(settings)
    scheduler = make_scheduler(settings, engine) if schedule else None
    seen = 0
    from eas_controller.api.jobs import task_states

    while True:
        did_something = scheduler.run_pass().did_something if scheduler else False
        state = task_states(engine, [task_id]).get(task_id)
        for line in log_lines_after(engine, task_id, seen):  # after reading the state: nothing is missed
            seen = line.id
            if stream:
                target = err if line.stream == "stderr" or line.severity in ("WARNING", "ERROR") else out
                if line.stream in ("stdout", "stderr"):
                    print(line.message, file=target, flush=True)
                else:
                    print("[%s] %s" % (line.severity.lower(), line.message), file=err, flush=True)
        if state is None:
            raise LaunchError("task %d does not exist" % task_id)
        if state in states.TASK_FINAL_STATES:
            for line in log_lines_after(engine, task_id, seen):
                seen = line.id
                if stream and line.stream in ("stdout", "stderr"):
                    print(line.message, file=err if line.stream == "stderr" else out, flush=True)
            if state == states.DONE:
                return 0
            if state == states.CANCELLED:
                return 130
            attempt = latest_attempt(engine, task_id)
            if attempt is not None and attempt.error_text and stream:
                print("task %d failed: %s" % (task_id, attempt.error_text.splitlines()[-1]), file=err, flush=True)
            code = attempt.exit_status if attempt is not None else None
            return code if code not in (None, 0) else 1
        if not did_something:
            time.sleep(poll_interval)
