"""init_queues.py: choose the job queue (SQL or RabbitMQ), declare its queues and record the choice.

With RabbitMQ, one durable queue per registered task type is declared (priorities honoured). Attempts
already queued are moved into the chosen queue: switching while work is queued loses nothing and runs
nothing twice. Stop the scheduler and the workers first, and start them again afterwards, so that they
use the new queue."""

from __future__ import annotations

from eas_controller import cli
from eas_controller.config import redact_url, save_settings

EPILOG = """examples:
  ./init_queues.py --mq_host 127.0.0.1 --mq_port 5672            RabbitMQ (user/password guest/guest)
  ./init_queues.py --mq_user eas --mq_passwd secret               RabbitMQ on this machine (host localhost)
  ./init_queues.py --amqp-url amqp://eas:secret@mq.example.org:5672/%2F
  ./init_queues.py --queue_implementation sql                    queue inside the database (no broker)
  ./init_queues.py                                               re-declare the configured queues
The choice is recorded in the settings file, so the scheduler and the workers need no flags."""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    cli.add_seed_broker_flags(parser)
    parser.add_argument("--amqp-url", help="RabbitMQ URL, e.g. amqp://user:pw@host:5672/%%2F (environment: EAS_AMQP_URL)")
    parser.add_argument("--queue-prefix", help="prefix of the RabbitMQ queue names (default eas.; "
                                               "environment: EAS_AMQP_QUEUE_PREFIX)")
    parser.add_argument("--consumer-timeout", type=float, metavar="SECONDS",
                        help="declare new queues with this consumer (acknowledgement) timeout; needs RabbitMQ >= "
                             "3.11.15. Workers ack as soon as a claim commits, so the default is fine")
    parser.add_argument("--no-save", action="store_true", help="do not record the choice in the settings file")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.consumer_timeout is not None and args.consumer_timeout <= 0:
        raise SystemExit("error: --consumer-timeout must be positive")
    return cli.run(lambda: initialise(args))


def initialise(args) -> int:
    from eas_controller.queues.amqp import AmqpQueue, BrokerError
    from eas_controller.queues.sql import SqlQueue
    from eas_controller.queues.transfer import to_amqp, to_sql
    from eas_controller.recovery import registered_types

    url = args.amqp_url or cli.seed_amqp_url(args)
    settings = cli.settings_from(args, amqp_url=url, amqp_queue_prefix=args.queue_prefix)
    engine = cli.connect(settings)
    names = registered_types(engine)
    print("database: %s" % redact_url(settings.database_url))
    amqp = AmqpQueue(engine, settings.amqp_url, settings.amqp_queue_prefix)
    try:
        if settings.queue == "amqp":
            print("queue: RabbitMQ at %s, queues %s<task type>" % (redact_url(settings.amqp_url), settings.amqp_queue_prefix))
            with cli.one_line_errors(BrokerError):
                outcomes = [amqp.broker.declare(name, args.consumer_timeout) for name in names]
            print("declared %d queues (%d new): %s" % (len(names), outcomes.count("created"), ", ".join(names)))
            moved = to_amqp(engine, amqp)
            if moved["moved"]:
                print("moved %d queued attempt(s) to RabbitMQ (%d confirmed%s)" % (
                    moved["moved"], moved["published"],
                    "; run queue_management/requeue_lost_messages.py once the broker is back"
                    if moved["unconfirmed"] else ""))
        else:
            print("queue: SQL (inside the database)")
            moved = to_sql(engine, SqlQueue(engine), amqp)
            if moved["moved"] or moved["messages"]:
                print("moved %d queued attempt(s) from RabbitMQ to the SQL queue (%d message(s) taken off the broker)"
                      % (moved["moved"], moved["messages"]))
            if moved["note"]:
                print("note: %s" % moved["note"])
    finally:
        amqp.close()
    if not args.no_save:
        changes = dict(queue=settings.queue)
        if url:
            changes["amqp_url"] = url
        if args.queue_prefix:
            changes["amqp_queue_prefix"] = args.queue_prefix
        print("settings recorded in %s" % save_settings(settings, **changes))
    return 0
