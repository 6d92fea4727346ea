"""slurm_workers.py: submit workers to Slurm as a job array (sbatch), one worker per array element.

Each worker gets the array's resources, exits when nothing is left it could run, or shortly before its time
limit (Slurm sends SIGTERM --margin seconds early; the worker releases what it holds: nothing is lost).
Honours SLURM_MAX_ARRAY_SIZE, SLURM_MAX_SUBMIT_JOBS and SLURM_MAX_RUNNING_SIZE, else the limits found with
scontrol / sacctmgr. Workers are named slurm-<array job id>_<index>@<host> in the diagnostics."""

from __future__ import annotations

import os
import sys

from eas_controller import cli

EPILOG = """examples:
  ./slurm_workers.py --count 20 --cpus-per-task 4 --memory-gb 16 --time 2:00:00 --partition short
  ./slurm_workers.py --count 4 --gpus 1 --task-types transit_search_tls
  ./slurm_workers.py --count 100 --dry-run       print the batch script(s), submit nothing
The connection reaches the jobs through the environment sbatch exports and the settings file."""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--count", type=int, default=1, help="workers to submit (array elements, default 1)")
    parser.add_argument("--cpus-per-task", type=int, default=1, help="cores per worker (sbatch --cpus-per-task)")
    parser.add_argument("--memory-gb", type=float, default=1.0, help="memory per worker in GB (sbatch --mem)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per worker (sbatch --gres=gpu:N)")
    parser.add_argument("--time", help="time limit per worker, Slurm format (e.g. 90, 2:00:00, 1-00:00:00)")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--account", help="Slurm account to charge")
    parser.add_argument("--job-name", default="eas-worker", help="Slurm job name (default eas-worker)")
    parser.add_argument("--margin", type=int, default=120,
                        help="seconds before the time limit at which the worker is told to stop (default 120)")
    parser.add_argument("--grace-period", type=float, default=None,
                        help="seconds running tasks get to finish after that signal before they are released "
                             "(default: margin - 30, at least shorter than --margin)")
    parser.add_argument("--task-types", help="comma-separated task types the workers run (default: all)")
    parser.add_argument("--concurrency", type=int, default=None, help="tasks run at once per worker (default: cpus)")
    parser.add_argument("--no-burst", action="store_true",
                        help="keep each worker serving until its time limit instead of exiting when idle")
    parser.add_argument("--log-dir", help="folder for the jobs' output files (default: <data dir>/slurm)")
    parser.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION",
                        help="extra #SBATCH line, e.g. --sbatch-option=--qos=long (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the batch script(s); submit nothing")
    return parser


def _job_environment(args, settings) -> dict:
    """What sbatch exports to the jobs: the connection this command resolved, so workers agree with it."""
    env = dict(os.environ)
    env["EAS_DATA_DIR"] = settings.data_dir
    if settings.settings_path:
        env["EAS_CONFIG"] = settings.settings_path
    if args.db_url:
        env["EAS_DB_URL"] = args.db_url
    return env


def submit_workers(args) -> int:
    from eas_controller.deployment import slurm

    settings = cli.settings_from(args)
    margin = args.margin
    grace = args.grace_period if args.grace_period is not None else max(0.0, min(margin - 30, margin * 0.75))
    spec = slurm.WorkerArray(
        count=args.count, cpus_per_task=args.cpus_per_task, memory_gb=args.memory_gb, gpus=args.gpus,
        time=args.time, partition=args.partition, account=args.account, job_name=args.job_name,
        margin_s=margin, grace_period_s=grace, task_types=args.task_types, concurrency=args.concurrency,
        burst=not args.no_burst, log_dir=os.path.abspath(args.log_dir or os.path.join(settings.data_dir, "slurm")),
        extra_sbatch=[option.lstrip() for option in args.sbatch_option])
    env = _job_environment(args, settings)
    with cli.one_line_errors(ValueError):
        spec.check()
        limits = slurm.look_up_limits(env, count_submitted=not args.dry_run)
        scripts, held_back = slurm.batch_scripts(spec, limits)
    for note in limits.notes:
        print("slurm: %s" % note, file=sys.stderr)
    if held_back:
        print("slurm: submitting %d of %d workers: the submit limit (%d jobs, %d already queued) holds back %d"
              % (args.count - held_back, args.count, limits.max_submit_jobs, limits.submitted, held_back),
              file=sys.stderr)
    if not scripts:
        raise cli.CommandError("nothing submitted: the submit limit (%d jobs) is reached" % limits.max_submit_jobs)
    if args.dry_run:
        print("\n".join(scripts))
        return 0
    with cli.one_line_errors(slurm.SlurmError):
        ids = [slurm.submit(script, env, spec.log_dir) for script in scripts]
    print("submitted %d worker(s) as Slurm job array(s) %s; output in %s" % (
        args.count - held_back, ", ".join(ids), spec.log_dir))
    return 0


main = cli.command(build_parser, submit_workers)
