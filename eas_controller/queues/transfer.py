"""Moving queued attempts from one queue implementation to the other (``init_queues.py``, restores).

Nothing is lost: the database is changed first, and RabbitMQ messages are acked only after the commit
that moved their attempts into the SQL queue. Nothing runs twice: an attempt that ends up carried by
both queues for a moment is claimed by whichever worker comes first; the other entry is dropped because
the attempt is no longer ``queued``.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eas_controller import states
from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.database.schema import attempts, sql_queue, task_types as task_types_table, tasks
from eas_controller.queues.amqp import CARRIED, PENDING, AmqpQueue, BrokerError, _connection_errors, describe
from eas_controller.queues.sql import SqlQueue

log = logging.getLogger("eas.queue.transfer")


def _queued_entries(connection: Connection, carriers: list[str]) -> list[dict]:
    rows = connection.execute(
        sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority)
        .join(tasks, tasks.c.id == attempts.c.task_id)
        .where(attempts.c.state == states.A_QUEUED, attempts.c.queue.in_(carriers))
        .order_by(attempts.c.id)
    ).all()
    return [dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority) for row in rows]


def _set_carrier(connection: Connection, attempt_ids: list[int], carrier: str) -> None:
    for start in range(0, len(attempt_ids), 500):
        connection.execute(attempts.update().where(
            attempts.c.id.in_(attempt_ids[start:start + 500]), attempts.c.state == states.A_QUEUED).values(queue=carrier))


def to_amqp(engine: Engine, amqp: AmqpQueue) -> dict:
    """Take every attempt out of the SQL queue and publish it to RabbitMQ (and any never confirmed)."""

    def body(connection: Connection) -> list[dict]:
        # lock the SQL queue rows first (claims lock them before the attempts too), then relabel
        rows = connection.execute(sa.select(sql_queue.c.id).with_for_update()).scalars().all()
        for start in range(0, len(rows), 500):
            connection.execute(sql_queue.delete().where(sql_queue.c.id.in_(rows[start:start + 500])))
        entries = _queued_entries(connection, ["sql", PENDING])
        _set_carrier(connection, [entry["attempt_id"] for entry in entries], PENDING)
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
        names = connection.execute(sa.select(task_types_table.c.name)).scalars().all()
        carried = connection.execute(sa.select(attempts.c.id).where(
            attempts.c.state == states.A_QUEUED, attempts.c.queue.in_([CARRIED, PENDING])).limit(1)).first()
    if amqp is not None and carried is not None:  # with nothing queued on RabbitMQ, leave the broker alone
        try:
            channel, deliveries = amqp.broker.drain(names)
        except (BrokerError,) + _connection_errors() as error:
            broker_note = ("RabbitMQ unreachable (%s): messages it still holds are dropped when delivered, "
                           "because their attempts are no longer queued there" % describe(error))

    def body(connection: Connection) -> list[dict]:
        entries = _queued_entries(connection, [CARRIED, PENDING])
        ids = [entry["attempt_id"] for entry in entries]
        present = set()
        for start in range(0, len(ids), 500):
            present.update(connection.execute(sa.select(sql_queue.c.attempt_id).where(
                sql_queue.c.attempt_id.in_(ids[start:start + 500]))).scalars())
        _set_carrier(connection, ids, sql.name)
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
        except _connection_errors() as error:
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
        queued = connection.execute(sa.select(sa.func.count()).select_from(attempts)
                                    .where(attempts.c.state == states.A_QUEUED)).scalar()
    if queue.name == CARRIED:
        def relabel(connection: Connection) -> None:
            connection.execute(attempts.update().where(attempts.c.state == states.A_QUEUED,
                                                       attempts.c.queue == CARRIED).values(queue=PENDING))

        run_transaction(engine, relabel)
        report = to_amqp(engine, queue)
        return dict(queued=queued, handed=report["moved"], unconfirmed=report["unconfirmed"])
    moved = to_sql(engine, queue, None)
    with read_transaction(engine) as connection:
        names = connection.execute(sa.select(task_types_table.c.name)).scalars().all()
    resynced = queue.resync(names, True)
    return dict(queued=queued, handed=moved["moved"] + len(resynced["missing"]), unconfirmed=0)
