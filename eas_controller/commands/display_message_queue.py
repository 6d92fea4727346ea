"""display_message_queue.py: what is waiting in the job queue, per task type.

For each task type: attempts queued and running (from the database), the age of the oldest queued
attempt, and what the queue itself holds (rows of the SQL queue; ready messages and consumers in
RabbitMQ). Types with nothing queued or running are left out unless --all or --task-type is given."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./display_message_queue.py
  ./display_message_queue.py --format json
  ./display_message_queue.py --all --format csv"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--task-type", action="append", metavar="TYPE", help="only this type (repeatable)")
    parser.add_argument("--all", action="store_true", help="list every registered task type")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    return parser


def display(args) -> int:
    from eas_controller import recovery
    from eas_controller.queues import make_queue
    from eas_controller.queues.amqp import BrokerError
    from eas_controller.views.output import emit

    settings = cli.settings_from(args)
    engine = cli.connect(settings)
    names = sorted({name.strip() for value in args.task_type or [] for name in value.split(",") if name.strip()})
    with cli.one_line_errors(ValueError):
        recovery.check_task_types(engine, names)
    queue = make_queue(settings, engine)
    try:
        rows = recovery.queue_status(engine, queue, names or None, everything=args.all)
    except BrokerError as error:
        raise cli.CommandError(str(error)) from None
    finally:
        queue.close()
    print(emit(rows, args.format, ["task_type", "queue", "queued", "running", "oldest_queued_s", "in_queue",
                                           "consumers"]))
    return 0


main = cli.command(build_parser, display)
