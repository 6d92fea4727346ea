"""The RabbitMQ connection behind the AMQP queue: one blocking connection, channels of its underlying
asynchronous connection for publishing and consuming, publisher confirms, draining for recovery.

pika's connection is not thread-safe: every method that touches it holds the broker's lock
(:func:`exclusive`), which the keepalive thread takes too while it answers the broker's heartbeats.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
from typing import Iterable

#: RabbitMQ priorities are 0..MAX_PRIORITY; task priorities -5..5 map onto them one to one (0 -> 5),
#: higher and lower ones are clamped. The SQL queue honours every integer.
MAX_PRIORITY = 10
PRIORITY_OFFSET = 5


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


def connection_errors() -> tuple:
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


def exclusive(method):
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

    @exclusive
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
        except connection_errors() as error:
            self.connection = None
            raise BrokerError("cannot reach RabbitMQ at %s: %s" % (redact(self.url), describe(error))) from None

    def shutdown(self) -> None:
        """Close for good: the keepalive thread stops too."""
        self._shut.set()
        self.close()

    @exclusive
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
    @exclusive
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

    @exclusive
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

    @exclusive
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

    # -- publishing ------------------------------------------------------------------------------------
    @exclusive
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

    @exclusive
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

    @exclusive
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
    @exclusive
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
