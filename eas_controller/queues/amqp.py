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
- A claim waits up to ``consume_wait`` for a first delivery, unless the worker has attempts at hand
  (claimed ahead, waiting for its slots: ``claim(wait=False)``); then it waits only until its consumers
  run (the broker's consume-ok: what their queues hold follows it) and returns what came. Waiting there,
  on an empty queue, held the backlog back from the slots for that long at every claim.
- After each claim the worker cancels its consumers (they start again, with the new number of free
  slots, at its next claim), so a busy worker holds no messages that an idle one could run; a keepalive
  thread answers the broker's heartbeats while it is busy.
- Concurrency limits: a delivered attempt whose key has no free slot (counted under the key's lock in the
  claim transaction, :mod:`eas_controller.store.limits`) is not started. The claim marks it ``queue =
  'amqp-lim'`` (still queued in SQL) and acks its message, so no worker meets it again; each scheduler pass
  (:meth:`AmqpQueue.repair`) publishes again as many held attempts of a key as the key has free slots not
  promised to messages in flight. Nothing is requeued to the broker and redelivered in a loop, and a
  held attempt does not sit unacked in a worker past RabbitMQ's consumer timeout.
- A lost broker connection is retried with backoff; the worker and the scheduler keep running.

Fault-injection hook (tests only): with ``EAS_TEST_CRASH_AFTER_DELIVERY=1`` in its environment, a worker
kills itself with SIGKILL right after RabbitMQ delivered it a message and before its claim commits, which
is how the tests show that such a message is redelivered and its task runs exactly once.
"""

from __future__ import annotations


from __future__ import annotations

import logging
import os
import signal
import time
from typing import Iterable

from sqlalchemy.engine import Connection, Engine

from eas_controller.backoff import Backoff
from eas_controller.database.engine import read_transaction, run_transaction
from eas_controller.queues.base import Queue
from eas_controller.registry import type_names
from eas_controller.queues.broker import Broker, BrokerError, Delivery, connection_errors, describe, exclusive, parse_attempt_id
from eas_controller.store import attempts as attempt_store
from eas_controller.store import limits as limit_store

log = logging.getLogger("eas.queue.amqp")
logging.getLogger("pika").setLevel(logging.CRITICAL)  # what matters is logged here, once and briefly

#: ``eas_attempts.queue`` of an attempt whose message the broker has confirmed / not yet confirmed.
CARRIED = "amqp"
PENDING = "amqp-new"
#: ``eas_attempts.queue`` of a queued attempt held back in SQL because its concurrency limit was full.
HELD = "amqp-lim"

CRASH_HOOK = "EAS_TEST_CRASH_AFTER_DELIVERY"

_RETRY_MAX_S = 30.0
_REPAIR_EVERY_S = 30.0
_REPAIR_GRACE_S = 10.0

__all__ = ["AmqpQueue", "BrokerError", "CARRIED", "HELD", "PENDING", "connection_errors", "describe"]


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
        self._retry = Backoff(0.5, _RETRY_MAX_S)  # after a failed publish or a lost connection
        self._next_repair = 0.0  # the first repair() runs at once: a scheduler that died may have left some
        # consumer state
        self._consumers: dict[str, tuple] = {}  # task type -> (channel, consumer tag)
        self._prefetch = 0
        self._buffer: list[Delivery] = []
        self._started: set[str] = set()  # task types whose consumer the broker confirmed (consume-ok)
        self._arrivals = 0
        self._all_types: list[str] = []
        self._all_types_at = 0.0

    # -- publishing side (scheduler) -------------------------------------------------------------------
    def enqueue(self, connection: Connection, entries: list[dict]) -> None:
        if not entries:
            return
        attempt_store.set_carrier(connection, [entry["attempt_id"] for entry in entries], PENDING)
        self._pending.extend(entries)

    def discard(self) -> None:
        self._pending = []
        self._removed_types = set()

    @exclusive
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
            except (BrokerError,) + connection_errors() as error:
                log.warning("could not drop the messages of removed attempts (%s); workers drop them on "
                            "delivery", describe(error))
                self.broker.close()

    @exclusive
    def publish(self, entries: list[dict]) -> int:
        """Publish now; what the broker does not confirm stays ``amqp-new`` in SQL for :meth:`repair`."""
        confirmed: list[int] = []
        try:
            confirmed = self.broker.publish(entries)
        except (BrokerError,) + connection_errors() as error:
            self.broker.close()
            delay = self._retry.next()
            self._retry_at = self._next_repair = time.time() + delay
            log.warning("publishing %d message(s) to RabbitMQ failed (%s); their attempts stay queued in SQL "
                        "and are published again in %.1f s", len(entries), describe(error), delay)
            return 0
        self._retry.reset()
        if len(confirmed) < len(entries):
            self._next_repair = min(self._next_repair, time.time() + self.repair_grace)
            log.warning("RabbitMQ refused %d message(s); they are published again later", len(entries) - len(confirmed))
        if confirmed:
            mark_carried(self.engine, confirmed)
        return len(confirmed)

    @exclusive
    def repair(self) -> int:
        """Publish attempts queued in SQL whose message the broker never confirmed (checked every 30 s, and
        soon after a failed publish). Returns how many were published."""
        now = time.time()
        if now < self._retry_at:
            return 0
        released = self.release_held()
        if now < self._next_repair:
            return released
        self._next_repair = now + _REPAIR_EVERY_S
        total = released
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

    @exclusive
    def release_held(self) -> int:
        """Publish again the held attempts whose concurrency limit has a free slot now. Returns how many."""
        with read_transaction(self.engine) as connection:
            entries = limit_store.held_with_room(connection, HELD)
        if not entries:
            return 0
        ids = [entry["attempt_id"] for entry in entries]
        run_transaction(self.engine, lambda connection: attempt_store.set_carrier(connection, ids, PENDING, only_from=HELD))
        published = self.publish(entries)
        log.info("published %d attempt(s) held back by their concurrency limit", published)
        return published

    # -- consuming side (workers) ----------------------------------------------------------------------
    def claim(self, worker: dict, task_types: Iterable[str] | None, limit: int, lease_seconds: float,
              wait: bool = True) -> list[dict]:
        if limit < 1:
            return []
        types = sorted(task_types) if task_types is not None else self.registered_types()
        if not types or time.time() < self._retry_at:
            return []
        with self.broker.lock:
            taken = self._receive(types, limit, wait)
        if not taken:
            return []
        ids = [delivery.attempt_id for delivery in taken if delivery.attempt_id is not None]
        held: list[int] = []

        def body(connection: Connection) -> list[dict]:
            held.clear()
            keys = limit_store.keys_of_attempts(connection, ids)
            admitted = ids
            if keys:  # exact under the keys' locks; the rest waits in SQL until the scheduler publishes it again
                admitted, refused = limit_store.admit(connection, [(attempt_id, keys.get(attempt_id)) for attempt_id in ids])
                attempt_store.set_carrier(connection, refused, HELD)
                held.extend(refused)
            return attempt_store.start(connection, admitted, worker, lease_seconds)

        claimed = run_transaction(self.engine, body, attempts=0)
        with self.broker.lock:
            try:
                # free slots changed: stop consuming (before acking, or the ack would make room for another
                # delivery to a consumer about to go) and give back what arrived beyond the limit
                self._stop_consuming()
                # the claim is committed: from here the lease protects the task. One cumulative ack per
                # channel: below its highest taken tag, every other delivery of that channel was settled
                # before (given back just now, or refused by pika after an earlier cancel)
                last: dict[int, tuple] = {}
                for delivery in taken:
                    number = delivery.channel.channel_number
                    if delivery.tag > last.get(number, (0, None))[0]:
                        last[number] = (delivery.tag, delivery.channel)
                for tag, channel in last.values():
                    channel.basic_ack(tag, multiple=True)
                self.broker.connection.process_data_events(0)  # send the acks now
            except connection_errors() as error:
                self._lost_connection(error)
        got = {claim["attempt_id"] for claim in claimed} | set(held)
        if held:
            log.info("held back %d attempt(s) whose concurrency limit is full: %s", len(held), held[:20])
        dropped = [delivery.attempt_id for delivery in taken if delivery.attempt_id not in got]
        if dropped:
            log.info("dropped %d message(s) whose attempt is no longer queued: %s", len(dropped), dropped[:20])
        return claimed

    def _receive(self, types: list[str], limit: int, wait: bool = True) -> list[Delivery]:
        """Up to ``limit`` deliveries (highest priority first), waiting briefly for the first one; without
        ``wait``, only until the consumers run (what their queues hold is then on its way)."""
        try:
            fresh = self._consume(types, limit)
            deadline = time.time() + self.consume_wait
            self.broker.connection.process_data_events(0)
            while (wait or fresh) and not self._buffer and time.time() < deadline:
                if not wait and len(self._started) >= len(self._consumers):
                    self.broker.connection.process_data_events(0.002)  # deliveries follow the consume-ok
                    break
                self.broker.connection.process_data_events(0.005 if wait else 0.001)
            if 0 < len(self._buffer) < limit:
                self.broker.connection.process_data_events(0.002)  # the rest of a burst
        except (BrokerError,) + connection_errors() as error:
            self._lost_connection(error)
            return []
        self._retry.reset()  # the broker answers: the next outage starts its backoff afresh
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
                self._all_types = type_names(connection)
            self._all_types_at = time.time()
        return self._all_types

    def _consume(self, types: list[str], limit: int) -> bool:
        """Consume the types' queues with prefetch = ``limit`` (the free slots); True if the consumers
        started now."""
        if any(not channel.is_open or channel.channel_number in self.broker.interrupted
               for channel, _tag in self._consumers.values()):
            self._stop_consuming()  # closed by the broker (it requeued what that channel held), or queue deleted
            self.broker.interrupted.clear()
            self.broker.declared = set()
        if self._consumers and (sorted(self._consumers) != types or self._prefetch != limit):
            self._stop_consuming()
        if self._consumers:
            return False
        for task_type in types:
            self.broker.ensure_queue(task_type)
        self._prefetch = limit
        for task_type, channel in self.broker.consumer_channels(types).items():
            if self.broker.prefetch.get(channel.channel_number) != limit:  # for consumers started after it
                channel.basic_qos(prefetch_count=limit)
                self.broker.prefetch[channel.channel_number] = limit
            tag = channel.basic_consume(self.broker.queue_name(task_type), self._make_callback(task_type, channel),
                                        auto_ack=False, callback=lambda _frame, name=task_type: self._started.add(name))
            self._consumers[task_type] = (channel, tag)
        return True

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
        self._consumers, self._buffer, self._started = {}, [], set()

    def _lost_connection(self, error: BaseException) -> None:
        self._consumers, self._buffer, self._started = {}, [], set()  # the broker requeues whatever was delivered but not acked
        self.broker.close()
        delay = self._retry.next()
        self._retry_at = time.time() + delay
        log.warning("RabbitMQ connection lost (%s); retrying in %.1f s", describe(error), delay)

    def remove(self, connection: Connection, attempt_ids: list[int]) -> None:
        """Their attempts are no longer queued in SQL; after commit, :meth:`flush` drops their messages."""
        self._removed_types.update(attempt_store.task_types_of(connection, attempt_ids))

    @exclusive
    def close(self) -> None:
        if self._consumers and self.broker.is_open:
            try:
                self._stop_consuming()
            except connection_errors():
                pass
        self.broker.shutdown()

    # -- recovery ----------------------------------------------------------------------------------------
    @exclusive
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

    @exclusive
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
                # messages worth keeping: their attempt is queued and carried by RabbitMQ
                queued = attempt_store.queued_among(connection, ids, [CARRIED, PENDING])
                missing = []
                if condition is not None:
                    missing = [row for row in attempt_store.queued_entries(
                        connection, [CARRIED, PENDING], condition, task_types, time.time() - min_age)
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
    run_transaction(engine, lambda connection: attempt_store.set_carrier(connection, attempt_ids, CARRIED, only_from=PENDING))


def unconfirmed_attempts(connection: Connection, queued_before: float, limit: int = 10000) -> list[dict]:
    """Queued attempts whose message was never confirmed, oldest first."""
    return attempt_store.queued_entries(connection, [PENDING], queued_before=queued_before, limit=limit)
