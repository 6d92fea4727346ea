"""Workers as Slurm job arrays: the batch script, the site's limits, and submission with ``sbatch``.

Each array element runs one worker that exits when nothing is left it could run (``--burst``), or shortly
before its time limit: ``#SBATCH --signal=B:TERM@<margin>`` makes Slurm send SIGTERM to the batch shell
``margin`` seconds early, and the script ``exec``s the worker so the worker *is* that shell. The worker then
stops claiming, lets running tasks finish within its ``--grace-period`` (shorter than the margin) and
releases the rest back to the queue, so nothing is lost when Slurm ends the job.

Limits follow cluster_tools: ``SLURM_MAX_ARRAY_SIZE``, ``SLURM_MAX_SUBMIT_JOBS`` and
``SLURM_MAX_RUNNING_SIZE`` from the environment, else ``MaxArraySize`` from ``scontrol show config`` and
``MaxSubmitJobsPerUser`` from ``sacctmgr`` (user association, then the ``normal`` QOS).
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import shlex
import shutil
import subprocess
import sys

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER_SCRIPT = os.path.join(PROJECT_ROOT, "eas_controller", "worker_orchestration", "worker.py")
NO_LIMIT = 2**32


class SlurmError(Exception):
    """Slurm is missing or refused a request; the message says which command and why."""


@dataclasses.dataclass
class Limits:
    """What the site allows, and where each number came from (shown by ``--dry-run``)."""

    max_array_size: int = NO_LIMIT
    max_submit_jobs: int = NO_LIMIT
    max_running: int = 0  # 0: no throttle (%N) on the array
    submitted: int = 0  # this user's jobs already in the queue (array elements counted one by one)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class WorkerArray:
    """The resources of each worker in the array and how it runs."""

    count: int = 1
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # Slurm's format: minutes, MM:SS, HH:MM:SS, D-HH...
    cpus_per_task: int = 1
    memory_gb: float = 1.0
    gpus: int = 0
    task_types: str | None = None
    concurrency: int | None = None
    job_name: str = "eas-worker"
    margin_s: int = 120
    grace_period_s: float = 90.0
    burst: bool = True
    log_dir: str = "."
    python: str = sys.executable
    extra_sbatch: list[str] = dataclasses.field(default_factory=list)

    def check(self) -> None:
        if self.count < 1:
            raise ValueError("--count must be at least 1")
        if self.cpus_per_task < 1 or self.memory_gb <= 0 or self.gpus < 0:
            raise ValueError("--cpus-per-task and --memory-gb must be positive and --gpus not negative")
        if not 0 < self.margin_s <= 65535:
            raise ValueError("--margin must be between 1 and 65535 seconds (the range of sbatch --signal)")
        if not 0 <= self.grace_period_s < self.margin_s:
            raise ValueError("--grace-period (%g s) must be shorter than --margin (%d s): the worker must release "
                             "its tasks before Slurm ends the job" % (self.grace_period_s, self.margin_s))
        if self.time is not None and not re.fullmatch(r"[0-9:-]+", self.time):
            raise ValueError("--time %r is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)" % self.time)


def _call(command: str, env: dict) -> tuple[int, str, str]:
    try:
        result = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 124, "", "%s: timed out" % command
    return result.returncode, result.stdout.strip(), result.stderr.strip()


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _env_limit(env: dict, name: str, notes: list[str]) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError("%s=%r is not a whole number" % (name, value)) from None
    notes.append("%s = %d (environment)" % (name, number))
    return number


def look_up_limits(env: dict | None = None, count_submitted: bool = True) -> Limits:
    """The site's limits: environment first, then ``scontrol`` / ``sacctmgr`` (each failure noted, not fatal)."""
    env = dict(os.environ if env is None else env)
    limits = Limits()
    notes = limits.notes
    value = _env_limit(env, "SLURM_MAX_ARRAY_SIZE", notes)
    if value is None:
        code, out, err = _call("scontrol show config", env)
        match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE) if code == 0 else None
        if match:
            value = int(match.group(1))
            notes.append("MaxArraySize = %d (scontrol show config)" % value)
        else:
            notes.append("MaxArraySize unknown (scontrol show config: %s); no array size limit assumed"
                         % _first_line(err or out))
    limits.max_array_size = value if value and value > 0 else NO_LIMIT
    value = _env_limit(env, "SLURM_MAX_SUBMIT_JOBS", notes)
    if value is None:
        value = _sacctmgr_submit_limit(env, notes)
    limits.max_submit_jobs = value if value and value > 0 else NO_LIMIT
    value = _env_limit(env, "SLURM_MAX_RUNNING_SIZE", notes)
    limits.max_running = max(0, value or 0)
    if count_submitted:
        user = env.get("USER") or getpass.getuser()
        code, out, err = _call("squeue --array -h -u %s -o %%i" % shlex.quote(user), env)
        if code == 0:
            limits.submitted = len([line for line in out.splitlines() if line.strip()])
            notes.append("%d job(s) of %s already queued (squeue)" % (limits.submitted, user))
        else:
            notes.append("queued jobs unknown (squeue: %s); assuming none" % _first_line(err or out))
    return limits


def _sacctmgr_submit_limit(env: dict, notes: list[str]) -> int | None:
    user = env.get("USER") or getpass.getuser()
    reasons = []
    for source, command in (
            ("user %s" % user, "sacctmgr -n -P list user %s withassoc format=maxsubmitjobsperuser" % shlex.quote(user)),
            ("QOS normal", "sacctmgr -n -P list qos normal format=maxsubmitjobsperuser")):
        code, out, err = _call(command, env)
        if code != 0:
            notes.append("MaxSubmitJobsPerUser unknown: sacctmgr has no accounting database here (%s); "
                         "no submit limit assumed" % _first_line(err or out))
            return None
        numbers = [int(item) for item in re.findall(r"^\s*(\d+)\s*$", out, re.MULTILINE)]
        if numbers:
            notes.append("MaxSubmitJobsPerUser = %d (sacctmgr, %s)" % (min(numbers), source))
            return min(numbers)
        reasons.append(source)
    notes.append("no MaxSubmitJobsPerUser set (sacctmgr: %s); no submit limit" % ", ".join(reasons))
    return None


def plan_arrays(count: int, limits: Limits) -> tuple[list[int], int]:
    """Array sizes to submit now, and how many workers the submit limit held back."""
    allowed = max(0, limits.max_submit_jobs - limits.submitted) if limits.max_submit_jobs != NO_LIMIT else count
    wanted = min(count, allowed)
    size = max(1, min(limits.max_array_size, limits.max_submit_jobs))
    sizes = []
    remaining = wanted
    while remaining > 0:
        sizes.append(min(size, remaining))
        remaining -= sizes[-1]
    return sizes, count - wanted


def worker_command(spec: WorkerArray) -> str:
    """The worker's command line inside the job; its name carries the Slurm ids and the host."""
    parts = [shlex.quote(spec.python), shlex.quote(WORKER_SCRIPT),
             "--name", '"slurm-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}'
                       '@$(hostname -s)"',
             "--cpus", '"${SLURM_CPUS_PER_TASK:-%d}"' % spec.cpus_per_task,
             "--memory-gb", "%g" % spec.memory_gb, "--gpus", str(spec.gpus),
             "--grace-period", "%g" % spec.grace_period_s]
    if spec.burst:
        parts.append("--burst")
    if spec.task_types:
        parts += ["--task-types", shlex.quote(spec.task_types)]
    if spec.concurrency:
        parts += ["--concurrency", str(spec.concurrency)]
    return " ".join(parts)


def batch_script(spec: WorkerArray, size: int, max_running: int = 0, part: tuple[int, int] = (1, 1)) -> str:
    """One array of ``size`` workers as an ``sbatch`` script (no secrets: the connection comes from the
    environment sbatch exports or the settings file)."""
    throttle = "%%%d" % max_running if max_running > 0 else ""
    lines = ["#!/bin/bash",
             "# EAS Controller workers as a Slurm job array (part %d of %d)." % part,
             "#SBATCH --job-name=%s" % spec.job_name,
             "#SBATCH --array=0-%d%s" % (size - 1, throttle),
             "#SBATCH --ntasks=1",
             "#SBATCH --cpus-per-task=%d" % spec.cpus_per_task,
             "#SBATCH --mem=%dM" % max(1, round(spec.memory_gb * 1024))]
    if spec.gpus:
        lines.append("#SBATCH --gres=gpu:%d" % spec.gpus)
    if spec.time:
        lines.append("#SBATCH --time=%s" % spec.time)
    if spec.partition:
        lines.append("#SBATCH --partition=%s" % spec.partition)
    if spec.account:
        lines.append("#SBATCH --account=%s" % spec.account)
    lines += ["#SBATCH --signal=B:TERM@%d" % spec.margin_s,
              "#SBATCH --output=%s" % os.path.join(spec.log_dir, "%x-%A_%a.out")]
    lines += ["#SBATCH %s" % extra for extra in spec.extra_sbatch]
    lines += ["",
              "# SIGTERM arrives %d s before the time limit; the worker stops claiming, lets running tasks" % spec.margin_s,
              "# finish for up to %g s, then releases them. exec: the worker is the batch shell Slurm signals."
              % spec.grace_period_s,
              "exec " + worker_command(spec), ""]
    return "\n".join(lines)


def batch_scripts(spec: WorkerArray, limits: Limits) -> tuple[list[str], int]:
    spec.check()
    sizes, held_back = plan_arrays(spec.count, limits)
    scripts = [batch_script(spec, size, limits.max_running, (index + 1, len(sizes))) for index, size in enumerate(sizes)]
    return scripts, held_back


def require_sbatch(env: dict) -> None:
    path = env.get("PATH", os.defpath)
    if shutil.which("sbatch", path=path) is None:
        raise SlurmError("sbatch is not installed or not on PATH: this machine cannot submit Slurm jobs")


def submit(script: str, env: dict, directory: str) -> str:
    """Submit one batch script; returns the Slurm job id."""
    require_sbatch(env)
    os.makedirs(directory, exist_ok=True)
    # sbatch inside an allocation inherits a CPU binding that makes the new job fail on Slurm >= 22.05.
    env = {key: value for key, value in env.items() if key != "SLURM_CPU_BIND"}
    result = subprocess.run(["sbatch", "--parsable"], input=script, env=env, cwd=directory, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        raise SlurmError("sbatch refused the job: %s" % _first_line(result.stderr or result.stdout))
    return result.stdout.strip().split(";")[0]
