"""Moving queued attempts from one queue implementation to the other (``init_queues.py``, restores).

Nothing is lost: the database is changed first, and RabbitMQ messages are acked only after the commit
that moved their attempts into the SQL queue. Nothing runs twice: an attempt that ends up carried by
both queues for a moment is claimed by whichever worker comes first; the other entry is dropped because
the attempt is no longer ``queued``.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection, Engine

from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.queues.amqp import CARRIED, HELD, PENDING, AmqpQueue
from eas_controller.queues.broker import BrokerError, connection_errors, describe
from eas_controller.queues.sql import SqlQueue
from eas_controller.registry import type_names
from eas_controller.store import attempts as attempt_store
from eas_controller.store import sql_queue as queue_store

log = logging.getLogger("eas.queue.transfer")


def to_amqp(engine: Engine, amqp: AmqpQueue) -> dict:
    """Take every attempt out of the SQL queue and publish it to RabbitMQ (and any never confirmed)."""

    def body(connection: Connection) -> list[dict]:
        # lock the SQL queue rows first (claims lock them before the attempts too), then relabel
        queue_store.take_all(connection)
        entries = attempt_store.queued_entries(connection, ["sql", PENDING])
        attempt_store.set_carrier(connection, [entry["attempt_id"] for entry in entries], PENDING)
        return entries

    entries = run_transaction(engine, body)
    published = amqp.publish(entries) if entries else 0
    return dict(moved=len(entries), published=published, unconfirmed=len(entries) - published)


def to_sql(engine: Engine, sql: SqlQueue, amqp: AmqpQueue | None) -> dict:
    """Put every attempt RabbitMQ carries into the SQL queue; then ack (drop) the broker's messages.

    ``amqp`` None leaves the broker alone (a restored database whose broker may serve another one).
    """
    channel, deliveries, broker_note = None, [], None
    with read_transaction(engine) as connection:
        names = type_names(connection)
        carried = attempt_store.queued_entries(connection, [CARRIED, PENDING, HELD], limit=1)
    if amqp is not None and carried:  # with nothing queued on RabbitMQ, leave the broker alone
        try:
            channel, deliveries = amqp.broker.drain(names)
        except (BrokerError,) + connection_errors() as error:
            broker_note = ("RabbitMQ unreachable (%s): messages it still holds are dropped when delivered, "
                           "because their attempts are no longer queued there" % describe(error))

    def body(connection: Connection) -> list[dict]:
        entries = attempt_store.queued_entries(connection, [CARRIED, PENDING, HELD])
        ids = [entry["attempt_id"] for entry in entries]
        present = queue_store.present(connection, ids)
        attempt_store.set_carrier(connection, ids, sql.name)
        sql.enqueue(connection, [entry for entry in entries if entry["attempt_id"] not in present])
        return entries

    try:
        entries = run_transaction(engine, body)
    except BaseException:
        if channel is not None and channel.is_open:
            channel.close()  # every drained message goes back
        raise
    if channel is not None:
        try:
            for delivery in deliveries:
                channel.basic_ack(delivery.tag)
            channel.close()
        except connection_errors() as error:
            broker_note = ("RabbitMQ connection lost while acknowledging (%s): leftover messages are dropped "
                           "when delivered" % describe(error))
    return dict(moved=len(entries), messages=len(deliveries), note=broker_note)


def adopt_restored(engine: Engine, queue) -> dict:
    """After a restore: hand every queued attempt to the configured queue.

    The saved file holds no broker messages: with RabbitMQ every queued attempt is published again (one
    that still has a message in this broker gets a harmless duplicate). With the SQL queue, attempts the
    saved database had on RabbitMQ move into the SQL queue and missing queue rows are restored.
    """
    with read_transaction(engine) as connection:
        queued = attempt_store.count_queued(connection)
    if queue.name == CARRIED:
        for carrier in (CARRIED, HELD):  # held ones are published too: a claim holds them back again if need be
            run_transaction(engine, lambda connection, carrier=carrier: attempt_store.relabel_queued(
                connection, carrier, PENDING))
        report = to_amqp(engine, queue)
        return dict(queued=queued, handed=report["moved"], unconfirmed=report["unconfirmed"])
    moved = to_sql(engine, queue, None)
    with read_transaction(engine) as connection:
        names = type_names(connection)
    resynced = queue.resync(names, True)
    return dict(queued=queued, handed=moved["moved"] + len(resynced["missing"]), unconfirmed=0)
