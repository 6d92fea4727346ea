"""worker.py: run tasks from the queue on this machine (service mode, or --burst to exit when done).

A worker claims only the task types it runs and whose resources fit in its free capacity, runs each in a
child process, renews the attempt's lease while it runs, and records the result, logs, timings, products
and output metadata. SIGTERM/Ctrl-C: stop claiming, let running tasks finish within --grace-period."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./worker.py                                 serve every task type, one at a time per core
  ./worker.py --concurrency 4 --name node7    four slots
  ./worker.py --task-types shell,sleep        only these types
  ./worker.py --burst                         exit when nothing is left that it could run
  ./worker.py --metrics-port 9411             with a Prometheus endpoint (docs/metrics.md)
  ./worker.py --db_host db7 --db_user eas --db_passwd secret --db_name eas --queue_implementation sql
                                              the seed's flags (a flag left out takes its default: localhost, ...)
  ./worker.py --mq_host mq7                   RabbitMQ queue on mq7 (a broker flag selects the AMQP queue)"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--name", help="worker name shown in diagnostics (default: host-pid)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="tasks run at once (default: the number of cpus declared)")
    parser.add_argument("--task-types", help="comma-separated task types to run (default: all registered)")
    parser.add_argument("--burst", action="store_true", help="exit when nothing is left that this worker could run")
    parser.add_argument("--cpus", type=float, default=None, help="cpus this worker offers (default: the machine's)")
    parser.add_argument("--gpus", type=int, default=None,
                        help="gpus this worker offers (default: CUDA_VISIBLE_DEVICES, else the NVIDIA GPUs present)")
    parser.add_argument("--memory-gb", type=float, default=None, help="memory offered (default: the machine's)")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness added to task processes, to keep the machine responsive (default 0)")
    parser.add_argument("--grace-period", type=float, default=30.0,
                        help="seconds running tasks get to finish after SIGTERM before they are stopped and released "
                             "back to the queue (default 30)")
    parser.add_argument("--lease-seconds", type=float, default=None,
                        help="lease length (default: setting lease_seconds / EAS_LEASE_SECONDS, 60)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="longest idle wait between claims (s)")
    parser.add_argument("--idle-poll-max", type=float, default=None,
                        help="after idle_after_s (default 60) without a claim, the idle wait grows from "
                             "--poll-interval up to this (default: setting idle_poll_max_s / "
                             "EAS_IDLE_POLL_MAX_SECONDS, 15; PostgreSQL wakes the worker at once when work is queued)")
    parser.add_argument("--keep-scratch", action="store_true", help="keep each attempt's scratch folder")
    parser.add_argument("--prefetch", type=int, default=100,
                        help="for task types whose recent attempts took under 0.25 s: attempts claimed ahead per slot, "
                             "so short tasks run back to back and are claimed and recorded in groups (default 100; "
                             "0: claim only for free slots)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    cli.add_metrics_arguments(parser)
    cli.add_seed_database_flags(parser)
    cli.add_seed_broker_flags(parser)
    return parser


def work(args) -> int:
    import os

    from eas_controller.queues import make_queue
    from eas_controller.worker.service import Worker

    cli.setup_logging(args.verbose)
    settings = cli.settings_from(args, lease_seconds=args.lease_seconds, idle_poll_max_s=args.idle_poll_max)
    for note in cli.seed_database_notes(args):
        print("note: %s" % note)
    for flag in ("concurrency", "cpus", "memory_gb"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise cli.CommandError("--%s must be positive" % flag.replace("_", "-"))
    if args.gpus is not None and args.gpus < 0:
        raise cli.CommandError("--gpus must not be negative")
    if args.prefetch < 0:
        raise cli.CommandError("--prefetch must not be negative")
    cpus = args.cpus if args.cpus is not None else float(os.cpu_count() or 1)
    concurrency = args.concurrency or max(1, int(cpus))
    task_types = [name.strip() for name in args.task_types.split(",") if name.strip()] if args.task_types else None
    engine = cli.connect(settings)
    worker = Worker(settings, engine, make_queue(settings, engine), name=args.name, concurrency=concurrency,
                    task_types=task_types, cpus=cpus, gpus=args.gpus, memory_gb=args.memory_gb, burst=args.burst,
                    nice=args.nice, grace_period=args.grace_period, poll_interval=args.poll_interval,
                    keep_scratch=args.keep_scratch, prefetch=args.prefetch)
    cli.serve_metrics(args, "worker", engine)
    with cli.one_line_errors(ValueError):
        return worker.run()


main = cli.command(build_parser, work)
