"""The AMQP queue: RabbitMQ carries the news that an attempt waits; SQL stays the truth about it.

- One durable queue per task type (``amqp_queue_prefix`` + type), declared with ``x-max-priority`` so a
  task's priority is honoured; persistent messages; publisher confirms.
- Publishing happens in :meth:`AmqpQueue.flush`, after the promotion transaction committed. Until the
  broker confirms a message its attempt is marked ``queue = 'amqp-new'`` in SQL; the scheduler's
  :meth:`AmqpQueue.repair` re-publishes attempts left in that state (a failed publish, or a scheduler
  that died between commit and publish), so nothing is lost.
- A worker consumes with prefetch = its free slots, claims the delivered attempts in SQL (queued ->
  running, with a lease) and only then acks. From there the lease protects the task, so a long task
  never meets RabbitMQ's consumer timeout. A message whose attempt is no longer ``queued`` (a duplicate,
  a redelivery after a crash, a cancelled task) is acked and dropped: consuming is idempotent.
- After each claim the worker cancels its consumers (they start again, with the new number of free
  slots, at its next claim), so a busy worker holds no messages that an idle one could run; a keepalive
  thread answers the broker's heartbeats while it is busy.
- A lost broker connection is retried with backoff; the worker and the scheduler keep running.

Fault-injection hook (tests only): with ``EAS_TEST_CRASH_AFTER_DELIVERY=1`` in its environment, a worker
kills itself with SIGKILL right after RabbitMQ delivered it a message and before its claim commits, which
is how the tests show that such a message is redelivered and its task runs exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import threading
import time
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eas_controller import lifecycle, states
from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.database.schema import attempts, task_types as task_types_table, tasks
from eas_controller.queues.base import Queue

log = logging.getLogger("eas.queue.amqp")
logging.getLogger("pika").setLevel(logging.CRITICAL)  # what matters is logged here, once and briefly

#: ``eas_attempts.queue`` of an attempt whose message the broker has confirmed / not yet confirmed.
CARRIED = "amqp"
PENDING = "amqp-new"

#: RabbitMQ priorities are 0..MAX_PRIORITY; task priorities -5..5 map onto them one to one (0 -> 5),
#: higher and lower ones are clamped. The SQL queue honours every integer.
MAX_PRIORITY = 10
PRIORITY_OFFSET = 5

CRASH_HOOK = "EAS_TEST_CRASH_AFTER_DELIVERY"

_RETRY_MAX_S = 30.0
_REPAIR_EVERY_S = 30.0
_REPAIR_GRACE_S = 10.0


class BrokerError(RuntimeError):
    """RabbitMQ cannot be used as asked (unreachable, or a queue declared with other arguments)."""


def message_priority(priority: int | None) -> int:
    return max(0, min(MAX_PRIORITY, int(priority or 0) + PRIORITY_OFFSET))


def queue_arguments(consumer_timeout_s: float | None = None) -> dict:
    """Arguments of a task-type queue; ``consumer_timeout_s`` needs RabbitMQ >= 3.11.15 to take effect."""
    arguments = {"x-max-priority": MAX_PRIORITY}
    if consumer_timeout_s:
        arguments["x-consumer-timeout"] = int(consumer_timeout_s * 1000)
    return arguments


def _connection_errors() -> tuple:
    import pika.exceptions as errors

    return (errors.AMQPConnectionError, errors.AMQPChannelError, errors.StreamLostError, ConnectionError, OSError)


@dataclasses.dataclass
class Delivery:
    task_type: str
    tag: int
    attempt_id: int | None
    priority: int
    order: int
    channel: object = None  # the channel it arrived on (acks go back on it)


def _exclusive(method):
    """One thread at a time uses the connection (pika's is not thread-safe): the caller, or the keepalive."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        lock = self.lock if isinstance(self, Broker) else self.broker.lock
        with lock:
            return method(self, *args, **kwargs)

    return wrapper


class _Unmanaged:
    """Marks a channel opened on pika's underlying connection: ``BlockingConnection.close()`` passes over it
    (closing the connection closes it) and never dispatches events for it (its callbacks run directly)."""

    is_open = False

    def _dispatch_events(self) -> None:
        pass


class Broker:
    """One blocking connection to RabbitMQ; consuming and publishing use channels of its underlying
    (asynchronous) connection.

    pika's blocking channel waits a round trip for each request: for each publisher confirm in turn (about
    a thousand messages a second), and for each consume and cancel, per queue, per claim. The channels
    here send a batch of requests at once - the broker handles a channel's requests in order - and
    collect the replies (cumulative confirms, deliveries) as they come: twenty times faster publishing,
    and a claim costs a few milliseconds whatever the number of task types.
    """

    KEEPALIVE_S = 10.0

    def __init__(self, url: str, prefix: str):
        self.url = url
        self.prefix = prefix
        self.lock = threading.RLock()
        self._keepalive_thread = None
        self._shut = threading.Event()
        self.connection = None
        self.channel = None  # declaring, draining (blocking)
        self.consumers: dict[str, object] = {}  # task type -> its consuming channel (asynchronous)
        self.prefetch: dict[int, int] = {}  # channel number -> prefetch set on it
        self.interrupted: set[int] = set()  # channels whose consumer the broker cancelled (queue deleted)
        self.publisher = None  # publishing with confirms (asynchronous)
        self.declared: set[str] = set()
        self._confirmed_up_to = 0
        self._nacked: set[int] = set()
        self._returned: set[int] = set()
        self._published = 0

    def queue_name(self, task_type: str) -> str:
        return self.prefix + task_type

    @property
    def is_open(self) -> bool:
        return self.connection is not None and self.connection.is_open

    def _keepalive(self) -> None:
        """Answer the broker's heartbeats while the owner is busy elsewhere (a worker whose slots are all
        running long tasks does not claim, and so does not touch the connection, for hours)."""
        while not self._shut.wait(self.KEEPALIVE_S):
            with self.lock:
                if self.connection is not None and self.connection.is_open:
                    try:
                        self.connection.process_data_events(0)
                    except Exception:  # noqa: BLE001 - the next real use finds it closed and reconnects
                        pass

    @_exclusive
    def connect(self) -> None:
        import pika

        if self.is_open:
            return
        if self._keepalive_thread is None:
            self._keepalive_thread = threading.Thread(target=self._keepalive, name="amqp-keepalive", daemon=True)
            self._keepalive_thread.start()
        self.close()
        parameters = pika.URLParameters(self.url)
        parameters.connection_attempts = 1
        parameters.socket_timeout = 5
        parameters.blocked_connection_timeout = 60
        try:
            self.connection = pika.BlockingConnection(parameters)
            self.channel = self.connection.channel()
        except _connection_errors() as error:
            self.connection = None
            raise BrokerError("cannot reach RabbitMQ at %s: %s" % (redact(self.url), describe(error))) from None

    def shutdown(self) -> None:
        """Close for good: the keepalive thread stops too."""
        self._shut.set()
        self.close()

    @_exclusive
    def close(self) -> None:
        connection, self.connection, self.channel, self.publisher = self.connection, None, None, None
        self.consumers, self.prefetch, self.interrupted = {}, {}, set()
        self.declared = set()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    # -- queues ----------------------------------------------------------------------------------------
    @_exclusive
    def ensure_queue(self, task_type: str) -> None:
        """Declare the type's queue with our arguments, or use it as it is if it exists with others (for
        example a consumer timeout given to init_queues.py)."""
        import pika.exceptions as errors

        name = self.queue_name(task_type)
        if name in self.declared:
            return
        self.connect()
        channel = self.connection.channel()
        try:
            channel.queue_declare(name, durable=True, arguments=queue_arguments())
        except errors.ChannelClosedByBroker as error:
            if error.reply_code != 406:
                raise
            channel = self.connection.channel()
            channel.queue_declare(name, passive=True)
        channel.close()
        self.declared.add(name)

    @_exclusive
    def declare(self, task_type: str, consumer_timeout_s: float | None = None) -> str:
        """Declare a type's queue with our arguments (init_queues); a clear error if it exists with others."""
        import pika.exceptions as errors

        self.connect()
        name = self.queue_name(task_type)
        channel = self.connection.channel()
        try:
            result = channel.queue_declare(name, durable=True, arguments=queue_arguments(consumer_timeout_s))
        except errors.ChannelClosedByBroker as error:
            if error.reply_code == 406:
                raise BrokerError(
                    "RabbitMQ queue %r exists with other arguments (%s). Move its attempts to the SQL queue "
                    "(init_queues.py --queue_implementation sql), delete the queue, then declare it again"
                    % (name, error.reply_text)) from None
            raise
        channel.close()
        self.declared.add(name)
        return "created" if result.method.message_count == 0 and result.method.consumer_count == 0 else "exists"

    @_exclusive
    def depth(self, task_type: str) -> dict | None:
        """Ready messages and consumers of a type's queue, or None if the queue does not exist."""
        import pika.exceptions as errors

        self.connect()
        channel = self.connection.channel()
        try:
            result = channel.queue_declare(self.queue_name(task_type), passive=True)
        except errors.ChannelClosedByBroker as error:
            if error.reply_code == 404:
                return None
            raise
        channel.close()
        return dict(messages=result.method.message_count, consumers=result.method.consumer_count)

    @_exclusive
    def delete_queue(self, task_type: str) -> None:
        self.connect()
        self.channel.queue_delete(self.queue_name(task_type))
        self.declared.discard(self.queue_name(task_type))

    # -- publishing ------------------------------------------------------------------------------------
    @_exclusive
    def raw_channels(self, count: int) -> list:
        """Channels of the underlying connection: requests are sent without waiting for their replies."""
        self.connect()
        opened: list = []
        channels = [self.connection._impl.channel(on_open_callback=opened.append) for _ in range(count)]
        for channel in channels:
            channel._set_cookie(_Unmanaged())
        deadline = time.time() + 30
        while len(opened) < count:
            if time.time() > deadline:
                raise BrokerError("RabbitMQ did not open a channel within 30 s")
            self.connection.process_data_events(0.002)
        return channels

    def raw_channel(self):
        return self.raw_channels(1)[0]

    @_exclusive
    def consumer_channels(self, task_types: list[str]) -> dict:
        """One consuming channel per task type: pika sends a channel's requests one reply after another, so
        separate channels let the consumes of many queues go out together."""
        for task_type in [t for t, channel in self.consumers.items() if not channel.is_open]:
            del self.consumers[task_type]
        missing = [task_type for task_type in task_types if task_type not in self.consumers]
        for task_type, channel in zip(missing, self.raw_channels(len(missing)) if missing else []):
            channel.add_on_cancel_callback(lambda _frame, number=channel.channel_number: self.interrupted.add(number))
            self.consumers[task_type] = channel
        return {task_type: self.consumers[task_type] for task_type in task_types}

    def _publisher(self):
        if self.publisher is None or not self.publisher.is_open:
            channel = self.raw_channel()
            done = []
            self._confirmed_up_to, self._published = 0, 0
            self._nacked, self._returned = set(), set()
            channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=done.append)
            channel.add_on_return_callback(self._on_return)
            while not done:
                self.connection.process_data_events(0.01)
            self.publisher = channel
        return self.publisher

    def _on_confirm(self, frame) -> None:
        import pika

        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            low = method.delivery_tag if not method.multiple else self._confirmed_up_to + 1
            self._nacked.update(range(low, method.delivery_tag + 1))
        self._confirmed_up_to = max(self._confirmed_up_to, method.delivery_tag)

    def _on_return(self, _channel, _method, properties, _body) -> None:
        if properties.message_id and properties.message_id.isdigit():
            self._returned.add(int(properties.message_id))

    @_exclusive
    def publish(self, entries: list[dict], timeout: float = 60.0) -> list[int]:
        """Publish one persistent message per attempt; returns the attempt ids the broker confirmed."""
        import pika

        if not entries:
            return []
        for task_type in sorted({entry["task_type"] for entry in entries}):
            self.ensure_queue(task_type)
        channel = self._publisher()
        tags: dict[int, int] = {}
        for entry in entries:
            body = json.dumps(dict(attempt_id=entry["attempt_id"], task_id=entry.get("task_id"),
                                   task_type=entry["task_type"]))
            channel.basic_publish(
                "", self.queue_name(entry["task_type"]), body.encode(),
                pika.BasicProperties(delivery_mode=2, priority=message_priority(entry.get("priority")),
                                     message_id=str(entry["attempt_id"]), content_type="application/json"),
                mandatory=True,
            )
            self._published += 1
            tags[self._published] = entry["attempt_id"]
            if self._published % 500 == 0:
                self.connection.process_data_events(0)  # write out, read confirms
        deadline = time.time() + timeout
        while self._confirmed_up_to < self._published:
            if time.time() > deadline:
                raise BrokerError("RabbitMQ did not confirm %d message(s) within %g s"
                                  % (self._published - self._confirmed_up_to, timeout))
            self.connection.process_data_events(0.002)
        return [attempt_id for tag, attempt_id in tags.items()
                if tag not in self._nacked and attempt_id not in self._returned]

    # -- draining (recovery) -------------------------------------------------------------------------
    @_exclusive
    def drain(self, task_types: Iterable[str]):
        """Take every ready message of these types' queues onto a private channel (unacknowledged).

        Returns (channel, deliveries); the caller acks what it drops and nacks (requeues) what it keeps,
        then closes the channel (anything left unacknowledged goes back to the queue).
        """
        self.connect()
        channel = self.connection.channel()
        deliveries = []
        for task_type in sorted(set(task_types)):
            if self.depth(task_type) is None:
                continue
            while True:
                method, properties, body = channel.basic_get(self.queue_name(task_type), auto_ack=False)
                if method is None:
                    break
                deliveries.append(Delivery(task_type, method.delivery_tag, parse_attempt_id(body),
                                           properties.priority or 0, len(deliveries)))
        return channel, deliveries


def parse_attempt_id(body: bytes) -> int | None:
    try:
        value = json.loads(body)["attempt_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe(error: BaseException) -> str:
    text = str(error) or error.__class__.__name__
    return text.splitlines()[0][:200]


def redact(url: str) -> str:
    from eas_controller.config import redact_url

    return redact_url(url)


class AmqpQueue(Queue):
    name = CARRIED

    def __init__(self, engine: Engine, url: str, prefix: str = "eas.", consume_wait: float = 0.2):
        self.engine = engine
        self.broker = Broker(url, prefix)
        self.consume_wait = consume_wait
        self.repair_grace = _REPAIR_GRACE_S  # another scheduler may be publishing attempts this young
        self._pending: list[dict] = []  # enqueued in the open transaction, published by flush()
        self._removed_types: set[str] = set()  # queues to sweep of messages for removed attempts
        self._retry_at = 0.0
        self._retry_delay = 0.5
        self._next_repair = 0.0  # the first repair() runs at once: a scheduler that died may have left some
        # consumer state
        self._consumers: dict[str, tuple] = {}  # task type -> (channel, consumer tag)
        self._prefetch = 0
        self._buffer: list[Delivery] = []
        self._arrivals = 0
        self._all_types: list[str] = []
        self._all_types_at = 0.0

    # -- publishing side (scheduler) -------------------------------------------------------------------
    def enqueue(self, connection: Connection, entries: list[dict]) -> None:
        if not entries:
            return
        ids = [entry["attempt_id"] for entry in entries]
        for start in range(0, len(ids), 500):
            connection.execute(attempts.update().where(attempts.c.id.in_(ids[start:start + 500])).values(queue=PENDING))
        self._pending.extend(entries)

    def discard(self) -> None:
        self._pending = []
        self._removed_types = set()

    @_exclusive
    def flush(self) -> None:
        pending, self._pending = self._pending, []
        removed, self._removed_types = self._removed_types, set()
        if pending:
            if time.time() < self._retry_at:  # the broker was unreachable a moment ago: repair() retries
                log.info("RabbitMQ unavailable: %d attempt(s) stay queued in SQL until it is back", len(pending))
            else:
                self.publish(pending)
        if removed:
            try:
                self.sweep(removed)
            except (BrokerError,) + _connection_errors() as error:
                log.warning("could not drop the messages of removed attempts (%s); workers drop them on "
                            "delivery", describe(error))
                self.broker.close()

    @_exclusive
    def publish(self, entries: list[dict]) -> int:
        """Publish now; what the broker does not confirm stays ``amqp-new`` in SQL for :meth:`repair`."""
        confirmed: list[int] = []
        try:
            confirmed = self.broker.publish(entries)
        except (BrokerError,) + _connection_errors() as error:
            self.broker.close()
            self._retry_at = self._next_repair = time.time() + self._retry_delay
            log.warning("publishing %d message(s) to RabbitMQ failed (%s); their attempts stay queued in SQL "
                        "and are published again in %.1f s", len(entries), describe(error), self._retry_delay)
            self._retry_delay = min(_RETRY_MAX_S, self._retry_delay * 2)
            return 0
        self._retry_delay = 0.5
        if len(confirmed) < len(entries):
            self._next_repair = min(self._next_repair, time.time() + self.repair_grace)
            log.warning("RabbitMQ refused %d message(s); they are published again later", len(entries) - len(confirmed))
        if confirmed:
            mark_carried(self.engine, confirmed)
        return len(confirmed)

    @_exclusive
    def repair(self) -> int:
        """Publish attempts queued in SQL whose message the broker never confirmed (checked every 30 s, and
        soon after a failed publish). Returns how many were published."""
        now = time.time()
        if now < self._retry_at or now < self._next_repair:
            return 0
        self._next_repair = now + _REPAIR_EVERY_S
        total = 0
        while True:
            with read_transaction(self.engine) as connection:
                rows = unconfirmed_attempts(connection, time.time() - self.repair_grace)
            if not rows:
                break
            published = self.publish(rows)
            total += published
            if published < len(rows):
                break
        if total:
            log.info("published %d attempt(s) whose message RabbitMQ had not confirmed", total)
        return total

    # -- consuming side (workers) ----------------------------------------------------------------------
    def claim(self, worker: dict, task_types: Iterable[str] | None, limit: int, lease_seconds: float) -> list[dict]:
        if limit < 1:
            return []
        types = sorted(task_types) if task_types is not None else self.registered_types()
        if not types or time.time() < self._retry_at:
            return []
        with self.broker.lock:
            taken = self._receive(types, limit)
        if not taken:
            return []
        ids = [delivery.attempt_id for delivery in taken if delivery.attempt_id is not None]
        claimed = run_transaction(
            self.engine, lambda connection: lifecycle.start_attempts(connection, ids, worker, lease_seconds), attempts=0)
        with self.broker.lock:
            try:
                # free slots changed: stop consuming (before acking, or the ack would make room for another
                # delivery to a consumer about to go) and give back what arrived beyond the limit
                self._stop_consuming()
                for delivery in taken:  # the claim is committed: from here the lease protects the task
                    delivery.channel.basic_ack(delivery.tag)
                self.broker.connection.process_data_events(0)  # send the acks now
            except _connection_errors() as error:
                self._lost_connection(error)
        got = {claim["attempt_id"] for claim in claimed}
        dropped = [delivery.attempt_id for delivery in taken if delivery.attempt_id not in got]
        if dropped:
            log.info("dropped %d message(s) whose attempt is no longer queued: %s", len(dropped), dropped[:20])
        return claimed

    def _receive(self, types: list[str], limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries (highest priority first), waiting briefly for the first one."""
        try:
            self._consume(types, limit)
            deadline = time.time() + self.consume_wait
            self.broker.connection.process_data_events(0)
            while not self._buffer and time.time() < deadline:
                self.broker.connection.process_data_events(0.005)
            if 0 < len(self._buffer) < limit:
                self.broker.connection.process_data_events(0.002)  # the rest of a burst
        except (BrokerError,) + _connection_errors() as error:
            self._lost_connection(error)
            return []
        self._retry_delay = 0.5  # the broker answers: the next outage starts its backoff afresh
        if self._buffer and os.environ.get(CRASH_HOOK) == "1":
            log.warning("%s=1: killing this worker after a delivery, before its claim commits", CRASH_HOOK)
            os.kill(os.getpid(), signal.SIGKILL)
        self._buffer.sort(key=lambda delivery: (-delivery.priority, delivery.order))
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return taken

    def registered_types(self) -> list[str]:
        """Every task type in the registry (a worker that runs them all); refreshed each minute."""
        if time.time() - self._all_types_at > 60:
            with read_transaction(self.engine) as connection:
                self._all_types = sorted(connection.execute(sa.select(task_types_table.c.name)).scalars())
            self._all_types_at = time.time()
        return self._all_types

    def _consume(self, types: list[str], limit: int) -> None:
        """Consume the types' queues with prefetch = ``limit`` (the free slots)."""
        if any(not channel.is_open or channel.channel_number in self.broker.interrupted
               for channel, _tag in self._consumers.values()):
            self._stop_consuming()  # closed by the broker (it requeued what that channel held), or queue deleted
            self.broker.interrupted.clear()
            self.broker.declared = set()
        if self._consumers and (sorted(self._consumers) != types or self._prefetch != limit):
            self._stop_consuming()
        if self._consumers:
            return
        for task_type in types:
            self.broker.ensure_queue(task_type)
        self._prefetch = limit
        for task_type, channel in self.broker.consumer_channels(types).items():
            if self.broker.prefetch.get(channel.channel_number) != limit:  # for consumers started after it
                channel.basic_qos(prefetch_count=limit)
                self.broker.prefetch[channel.channel_number] = limit
            tag = channel.basic_consume(self.broker.queue_name(task_type), self._make_callback(task_type, channel),
                                        auto_ack=False)
            self._consumers[task_type] = (channel, tag)

    def _make_callback(self, task_type: str, channel):
        def on_message(_channel, method, properties, body):
            self._arrivals += 1
            self._buffer.append(Delivery(task_type, method.delivery_tag, parse_attempt_id(body),
                                         properties.priority or 0, self._arrivals, channel))
        return on_message

    def _stop_consuming(self) -> None:
        """Cancel the consumers (no reply awaited: what still arrives for them is rejected back to the queue)
        and give back what arrived beyond the claim."""
        for channel, tag in self._consumers.values():
            if channel.is_open:
                channel.basic_cancel(tag)
        for delivery in self._buffer:
            if delivery.channel.is_open:
                delivery.channel.basic_nack(delivery.tag, requeue=True)
        self._consumers, self._buffer = {}, []

    def _lost_connection(self, error: BaseException) -> None:
        self._consumers, self._buffer = {}, []  # the broker requeues whatever was delivered but not acked
        self.broker.close()
        self._retry_at = time.time() + self._retry_delay
        log.warning("RabbitMQ connection lost (%s); retrying in %.1f s", describe(error), self._retry_delay)
        self._retry_delay = min(_RETRY_MAX_S, self._retry_delay * 2)

    def remove(self, connection: Connection, attempt_ids: list[int]) -> None:
        """Their attempts are no longer queued in SQL; after commit, :meth:`flush` drops their messages."""
        for start in range(0, len(attempt_ids), 500):
            chunk = attempt_ids[start:start + 500]
            self._removed_types.update(connection.execute(
                sa.select(attempts.c.task_type).where(attempts.c.id.in_(chunk)).distinct()).scalars())

    @_exclusive
    def close(self) -> None:
        if self._consumers and self.broker.is_open:
            try:
                self._stop_consuming()
            except _connection_errors():
                pass
        self.broker.shutdown()

    # -- recovery ----------------------------------------------------------------------------------------
    @_exclusive
    def carried(self, task_types: Iterable[str]) -> dict[str, dict]:
        result = {}
        for task_type in task_types:
            depth = self.broker.depth(task_type)
            result[task_type] = dict(in_queue=depth["messages"] if depth else None,
                                     consumers=depth["consumers"] if depth else None)
        return result

    def sweep(self, task_types: Iterable[str]) -> dict:
        """Drop the messages of these queues whose attempt is no longer queued on RabbitMQ."""
        return self.resync(task_types, None)

    @_exclusive
    def resync(self, task_types: Iterable[str], condition, min_age: float = 0.0, dry_run: bool = False) -> dict:
        """Drain the queues, drop messages whose attempt is not queued here (or that duplicate another), put
        the rest back, and publish queued attempts matching ``condition`` that had no message.

        Messages a worker holds at this moment are not seen: publishing those again makes a harmless
        duplicate (the second delivery is dropped), never a loss.
        """
        task_types = sorted(set(task_types))
        channel, deliveries = self.broker.drain(task_types)
        try:
            ids = [d.attempt_id for d in deliveries if d.attempt_id is not None]
            carried = set(ids)
            with read_transaction(self.engine) as connection:
                queued = set()  # messages worth keeping: their attempt is queued and carried by RabbitMQ
                for start in range(0, len(ids), 500):
                    queued.update(connection.execute(sa.select(attempts.c.id).where(
                        attempts.c.id.in_(ids[start:start + 500]), attempts.c.state == states.A_QUEUED,
                        attempts.c.queue.in_([CARRIED, PENDING]))).scalars())
                missing = []
                if condition is not None:
                    missing = [row for row in queued_attempts(connection, task_types, condition,
                                                              time.time() - min_age)
                               if row["attempt_id"] not in carried]
            seen: set[int] = set()
            dropped = 0
            for delivery in deliveries:
                keep = delivery.attempt_id in queued and delivery.attempt_id not in seen
                seen.add(delivery.attempt_id)
                if dry_run:
                    dropped += not keep
                elif keep:
                    channel.basic_nack(delivery.tag, requeue=True)
                else:
                    channel.basic_ack(delivery.tag)
                    dropped += 1
        finally:
            if channel.is_open:
                channel.close()  # with a dry run, every message goes back
        published = 0
        if missing and not dry_run:
            published = self.publish(missing)
        return dict(messages=len(deliveries), dropped=dropped, missing=[row["attempt_id"] for row in missing],
                    republished=published)


def mark_carried(engine: Engine, attempt_ids: list[int]) -> None:
    def body(connection: Connection) -> None:
        for start in range(0, len(attempt_ids), 500):
            connection.execute(attempts.update().where(
                attempts.c.id.in_(attempt_ids[start:start + 500]), attempts.c.queue == PENDING).values(queue=CARRIED))

    run_transaction(engine, body)


def unconfirmed_attempts(connection: Connection, queued_before: float, limit: int = 10000) -> list[dict]:
    """Queued attempts whose message was never confirmed, oldest first."""
    rows = connection.execute(
        sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority)
        .join(tasks, tasks.c.id == attempts.c.task_id)
        .where(attempts.c.state == states.A_QUEUED, attempts.c.queue == PENDING, attempts.c.queued_at < queued_before)
        .order_by(attempts.c.id).limit(limit)
    ).all()
    return [dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority) for row in rows]


def queued_attempts(connection: Connection, task_types: list[str], condition, queued_before: float) -> list[dict]:
    """Queued attempts of these types carried (or to be carried) by RabbitMQ and matching ``condition``."""
    query = (sa.select(attempts.c.id, attempts.c.task_id, attempts.c.task_type, tasks.c.priority)
             .join(tasks, tasks.c.id == attempts.c.task_id)
             .where(attempts.c.state == states.A_QUEUED, attempts.c.queue.in_([CARRIED, PENDING]),
                    attempts.c.task_type.in_(task_types), attempts.c.queued_at <= queued_before)
             .order_by(attempts.c.id))
    if condition is not True:
        query = query.where(condition)
    return [dict(attempt_id=row.id, task_id=row.task_id, task_type=row.task_type, priority=row.priority)
            for row in connection.execute(query)]
