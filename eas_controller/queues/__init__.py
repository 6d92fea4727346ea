"""The job queue: one small interface, with the SQL queue and the AMQP (RabbitMQ) queue behind it.

The database stays the truth with both: an attempt's state is always in SQL; a queue only carries the
news that an attempt is waiting to be claimed. ``eas_attempts.queue`` records which queue carries each
attempt (``sql``, ``amqp``, ``amqp-new`` while RabbitMQ has not yet confirmed its message, or ``amqp-lim``
while it is held back in SQL because its concurrency limit was full).
"""

from eas_controller.queues.base import Queue
from eas_controller.queues.sql import SqlQueue

def make_queue(settings, engine) -> Queue:
    """The queue implementation the settings name."""
    if settings.queue == "sql":
        return SqlQueue(engine)
    if settings.queue == "amqp":
        from eas_controller.queues.amqp import AmqpQueue

        return AmqpQueue(engine, settings.amqp_url, settings.amqp_queue_prefix)
    raise ValueError("unknown queue implementation %r (use sql or amqp)" % settings.queue)
