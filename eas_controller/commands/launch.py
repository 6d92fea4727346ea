"""launch.py: submit one shell command as a task (or one per line of a file), print its id; --wait runs it to the end.

A batch is a job name: every launch with the same -b adds its tasks to that job, so the batch can be
followed, cancelled or rescheduled as one. Resources (--cpus, --gpus, --memory-gb) decide which workers may
run the command; it sees them as $EAS_CPUS (and $EAS_GPUS, $EAS_MEMORY_GB), with -i/-o files as
$EAS_INPUT_<TYPE> / $EAS_OUTPUT_<TYPE>. --wait drives scheduling passes itself, streams the task's log lines
as they are recorded and exits with the command's exit status."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./launch.py -- echo hello                              one task in batch 'launch'; prints its id
  ./launch.py -b survey -n star42 --cpus 4 -- ./fit.sh star42
  ./launch.py -o out=table.csv -- 'seq 3 > $EAS_OUTPUT_OUT'     a product later tasks can read with -i
  ./launch.py --wait -- make -C src                      wait, stream the output, exit with its status
  ./launch.py -b night1 --commands jobs.txt              one task per line, all in one transaction
  printf 'echo a\\necho b\\n' | ./launch.py --commands -
Workers run the tasks (./worker.py); without --wait, ./schedule_all_waiting_tasks.py queues them."""

DEFAULT_BATCH = "launch"


def build_parser():
    import argparse

    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("-b", "--batch", default=DEFAULT_BATCH, help="batch (job name) to add to (default: launch)")
    parser.add_argument("-n", "--name", help="task name shown in diagnostics (default: none)")
    parser.add_argument("--cpus", type=float, default=None, help="cores the command needs (default 1)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs the command needs (default 0)")
    parser.add_argument("--memory-gb", type=float, default=None, help="memory the command needs (default 0.5)")
    parser.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="[TYPE=]FILE",
        help="a file the command reads, relative to the data directory; the task waits for the task "
        "that makes it (repeatable; TYPE default input, input_2, ...)",
    )
    parser.add_argument(
        "-o",
        "--output",
        action="append",
        default=[],
        metavar="[TYPE=]FILE",
        help="a file the command must write to $EAS_OUTPUT_<TYPE> (repeatable; TYPE default output)",
    )
    parser.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    parser.add_argument(
        "--commands",
        metavar="FILE",
        help="read commands from FILE (- for standard input), one per "
        "line; blank lines and lines starting with # are skipped",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for the task, print its log lines, exit with its exit status"
    )
    parser.add_argument(
        "--no-schedule", action="store_true", help="with --wait: leave queueing to a running scheduler daemon"
    )
    parser.add_argument("--poll-interval", type=float, default=0.2, help="seconds between checks with --wait")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...: the command to run")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return cli.run(lambda: launch(args))


def launch(args) -> int:
    import sys

    from eas_controller.api.launcher import (
        LaunchError,
        add_commands,
        commands_from_text,
        parse_files,
        wait_for_task,
    )

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.commands and command:
        raise cli.CommandError("give either --commands FILE or -- CMD ARGS..., not both")
    with cli.one_line_errors(LaunchError):
        if args.commands:
            if args.commands == "-":
                text, where = sys.stdin.read(), "standard input"
            else:
                try:
                    with open(args.commands) as handle:
                        text, where = handle.read(), args.commands
                except OSError as error:
                    raise cli.CommandError("cannot read %s: %s" % (args.commands, error.strerror)) from None
            lines = commands_from_text(text, where)
        elif command:
            lines = [command]
        else:
            raise cli.CommandError("no command given: ./launch.py [options] -- CMD ARGS... (or --commands FILE)")
        inputs = parse_files(args.input, "input", "-i")
        outputs = parse_files(args.output, "output", "-o")
        settings = cli.settings_from(args)
        cli.connect(settings)
        job, task_ids = add_commands(
            settings,
            lines,
            batch=args.batch,
            name=args.name,
            cpus=args.cpus,
            gpus=args.gpus,
            memory_gb=args.memory_gb,
            inputs=inputs,
            outputs=outputs,
            priority=args.priority,
        )
    for task_id in task_ids:
        print(task_id, flush=True)
    if not args.wait:
        return 0
    statuses = [
        wait_for_task(settings, task_id, schedule=not args.no_schedule, poll_interval=args.poll_interval, stream=True)
        for task_id in task_ids
    ]
    return next((status for status in statuses if status != 0), 0)
