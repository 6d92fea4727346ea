#!/usr/bin/env python3
"""The raw ceiling of this machine: how fast a bare one-table queue can be claimed and completed.

Each process loops: one transaction claims the oldest queued row(s) with ``SELECT ... FOR UPDATE SKIP
LOCKED`` + ``UPDATE`` + ``COMMIT`` (SQLite: ``BEGIN IMMEDIATE``, it has one writer), then one transaction
per job marks it done. Raw DB-API drivers (pymysql, psycopg, sqlite3), no SQLAlchemy: nothing the
controller does can beat this, so it is the yardstick for everything else. Every claim is recorded with
its claimer and checked for duplicates after the run. RabbitMQ's persistent publish (with publisher
confirms) and consume rates are measured with pika on a queue of our own, deleted afterwards.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import time
import uuid

from bench.common import (
    BACKENDS, Result, Services, backend_of, dbapi_connect, duplicate_count, run_processes, unavailable_reason,
)

RAW_TABLE = "bench_raw_queue"
QUEUED, RUNNING, DONE = 0, 1, 2


# -- a one-table queue ----------------------------------------------------------------------------------------

def _sql(url: str, statement: str) -> str:
    """Our statements use ``%s`` placeholders; sqlite3 wants ``?``."""
    return statement.replace("%s", "?") if backend_of(url) == "sqlite" else statement


def _begin(cursor, url: str, immediate: bool = True) -> None:
    """pymysql and psycopg open a transaction by themselves; sqlite3 in autocommit mode needs a BEGIN."""
    if backend_of(url) == "sqlite":
        cursor.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _commit(connection, cursor, url: str) -> None:
    if backend_of(url) == "sqlite":
        if connection.in_transaction:
            cursor.execute("COMMIT")
    else:
        connection.commit()


def _rollback(connection, cursor, url: str) -> None:
    if backend_of(url) == "sqlite":
        if connection.in_transaction:
            cursor.execute("ROLLBACK")
    else:
        connection.rollback()


def create_queue_table(url: str, table: str, jobs: int) -> None:
    """(Re)create ``table`` holding ``jobs`` queued rows, indexed for the claim's WHERE and ORDER BY."""
    backend = backend_of(url)
    connection = dbapi_connect(url)
    cursor = connection.cursor()
    cursor.execute("DROP TABLE IF EXISTS %s" % table)
    if backend == "mariadb":
        cursor.execute("CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, state TINYINT NOT NULL DEFAULT 0, "
                       "claimed_by INT NULL, payload VARCHAR(64) NOT NULL, KEY ix_claim (state, id), "
                       "KEY ix_claimer (claimed_by, state)) ENGINE=InnoDB" % table)
    elif backend == "postgresql":
        cursor.execute("CREATE TABLE %s (id BIGSERIAL PRIMARY KEY, state SMALLINT NOT NULL DEFAULT 0, "
                       "claimed_by INT NULL, payload VARCHAR(64) NOT NULL)" % table)
    else:
        cursor.execute("CREATE TABLE %s (id INTEGER PRIMARY KEY, state INTEGER NOT NULL DEFAULT 0, "
                       "claimed_by INTEGER NULL, payload VARCHAR(64) NOT NULL)" % table)
    if backend != "mariadb":
        cursor.execute("CREATE INDEX ix_%s_claim ON %s (state, id)" % (table, table))
        cursor.execute("CREATE INDEX ix_%s_claimer ON %s (claimed_by, state)" % (table, table))
    if backend != "sqlite":
        connection.commit()
    _begin(cursor, url)
    rows = [("job %d" % number,) for number in range(jobs)]
    for start in range(0, len(rows), 1000):
        cursor.executemany(_sql(url, "INSERT INTO %s (payload) VALUES (%%s)" % table), rows[start:start + 1000])
    _commit(connection, cursor, url)
    if backend == "postgresql":
        connection.autocommit = True
        cursor.execute("VACUUM ANALYZE %s" % table)
    connection.close()


def queue_states(url: str, table: str) -> dict[int, int]:
    connection = dbapi_connect(url)
    cursor = connection.cursor()
    cursor.execute("SELECT state, COUNT(*) FROM %s GROUP BY state" % table)
    counts = {int(state): int(count) for state, count in cursor.fetchall()}
    connection.close()
    return counts


def drop_table(url: str, table: str) -> None:
    connection = dbapi_connect(url)
    cursor = connection.cursor()
    cursor.execute("DROP TABLE IF EXISTS %s" % table)
    _commit(connection, cursor, url)
    connection.close()


def skip_locked_loop(url: str, table: str, batch: int, claimer: int) -> list[int]:
    """One claimer: claim ``batch`` rows per transaction, then complete each in its own transaction."""
    connection = dbapi_connect(url)
    cursor = connection.cursor()
    lock = "" if backend_of(url) == "sqlite" else " FOR UPDATE SKIP LOCKED"
    select = "SELECT id FROM %s WHERE state = %d ORDER BY id LIMIT %d%s" % (table, QUEUED, batch, lock)
    complete = _sql(url, "UPDATE %s SET state = %d WHERE id = %%s AND claimed_by = %%s" % (table, DONE))
    claimed: list[int] = []
    while True:
        _begin(cursor, url)
        cursor.execute(select)
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            _commit(connection, cursor, url)
            break
        cursor.execute(_sql(url, "UPDATE %s SET state = %d, claimed_by = %%s WHERE id IN (%s)" % (
            table, RUNNING, ", ".join(["%s"] * len(ids)))), [claimer, *ids])
        _commit(connection, cursor, url)
        claimed.extend(ids)
        for job_id in ids:
            _begin(cursor, url)
            cursor.execute(complete, (job_id, claimer))
            _commit(connection, cursor, url)
    connection.close()
    return claimed


def measure_claim_loop(url: str, table: str, jobs: int, processes: int, loop, loop_args: tuple = (),
                       final_state: int = DONE) -> dict:
    """Load ``jobs`` rows, run ``loop(url, table, *loop_args, claimer)`` in ``processes`` processes.

    Returns the rate, the duplicate claims (from every recorded (job, claimer) pair) and whether every
    job ended in ``final_state`` (done; running for a loop that only claims). ``loop`` returns the job ids it
    claimed, or (ids, extra counters).
    """
    create_queue_table(url, table, jobs)
    elapsed, outputs = run_processes(loop, [(url, table, *loop_args, claimer) for claimer in range(1, processes + 1)])
    claims, extra = [], {}
    for claimer, output in enumerate(outputs, start=1):
        ids, counters = output if isinstance(output, tuple) else (output, {})
        claims.extend((job_id, claimer) for job_id in ids)
        for key, value in counters.items():
            extra[key] = extra.get(key, 0) + value
    states = queue_states(url, table)
    drop_table(url, table)
    unclaimed = jobs - len({job_id for job_id, _ in claims})
    return dict(rate=len(claims) / elapsed, elapsed=elapsed, claims=len(claims), duplicates=duplicate_count(claims),
                unclaimed=unclaimed, all_done=states == {final_state: jobs}, extra=extra)


def _integrity_note(measured: dict) -> str:
    problems = []
    if measured["unclaimed"]:
        problems.append("%d jobs never claimed" % measured["unclaimed"])
    if not measured["all_done"]:
        problems.append("not every job ended done")
    return "; ".join(problems)


def run_sql_limits(services: Services, backends=BACKENDS, process_counts=(1, 2, 4), jobs: int = 2000,
                   batches=(1, 10)) -> list[Result]:
    results = []
    for backend in backends:
        reason = unavailable_reason(services, backend)
        for batch in batches:
            name = "raw claim+complete, SKIP LOCKED, %s" % ("1 job/claim" if batch == 1 else "%d jobs/claim" % batch)
            if backend == "sqlite":
                name = name.replace("SKIP LOCKED", "BEGIN IMMEDIATE")
            for processes in process_counts:
                if reason:
                    results.append(Result.skipped("limits", name, backend, reason, "jobs/s", processes=processes))
                    continue
                measured = measure_claim_loop(services.sqlalchemy_url(backend, "limits"), RAW_TABLE, jobs, processes,
                                              skip_locked_loop, (batch,))
                results.append(Result("limits", name, backend, measured["rate"], "jobs/s", processes=processes,
                                      jobs=jobs, duplicates=measured["duplicates"], note=_integrity_note(measured),
                                      extra=dict(elapsed_s=measured["elapsed"], batch=batch)))
    return results


# -- RabbitMQ -------------------------------------------------------------------------------------------------

def _amqp_channel(amqp_url: str):
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    return connection, connection.channel()


def _publish(amqp_url: str, queue: str, messages: int) -> float:
    """Publish persistent messages, each confirmed by the broker before the next; returns the rate."""
    import pika

    connection, channel = _amqp_channel(amqp_url)
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    body = b'{"attempt_id": 123456, "task_type": "null"}'
    started = time.perf_counter()
    for _ in range(messages):
        channel.basic_publish("", queue, body, properties=properties, mandatory=True)
    rate = messages / (time.perf_counter() - started)
    connection.close()
    return rate


def _consume(amqp_url: str, queue: str, prefetch: int, _claimer: int) -> tuple:
    """Consume and ack one at a time until the queue stays empty; returns (count, first start, last ack)."""
    connection, channel = _amqp_channel(amqp_url)
    channel.basic_qos(prefetch_count=prefetch)
    count, started, last = 0, time.perf_counter(), None
    for method, _properties, _body in channel.consume(queue, inactivity_timeout=0.5):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        count += 1
        last = time.perf_counter()
    channel.cancel()
    connection.close()
    return count, started, last or started


def run_rabbitmq_limits(services: Services, messages: int = 2000, consumer_counts=(1, 2), prefetch: int = 10) -> list[Result]:
    reason = unavailable_reason(services, "amqp")
    name_publish = "publish, persistent + confirm each"
    if reason:
        return [Result.skipped("limits", name_publish, "amqp", reason, "msg/s", processes=1)] + [
            Result.skipped("limits", "consume + ack each", "amqp", reason, "msg/s", processes=count)
            for count in consumer_counts]
    queue = "eas_bench_limits_%s" % uuid.uuid4().hex[:12]
    connection, channel = _amqp_channel(services.amqp_url)
    channel.queue_declare(queue, durable=True)
    connection.close()
    results = []
    try:
        for count in consumer_counts:
            rate = _publish(services.amqp_url, queue, messages)
            if count == consumer_counts[0]:
                results.append(Result("limits", name_publish, "amqp", rate, "msg/s", processes=1, jobs=messages))
            import multiprocessing

            context = multiprocessing.get_context("fork")
            with context.Pool(count) as pool:
                outputs = pool.starmap(_consume, [(services.amqp_url, queue, prefetch, n) for n in range(count)])
            consumed = sum(output[0] for output in outputs)
            elapsed = max(output[2] for output in outputs) - min(output[1] for output in outputs)
            results.append(Result("limits", "consume + ack each (prefetch %d)" % prefetch, "amqp", consumed / elapsed,
                                  "msg/s", processes=count, jobs=consumed,
                                  note="" if consumed == messages else "consumed %d of %d" % (consumed, messages)))
    finally:
        connection, channel = _amqp_channel(services.amqp_url)
        channel.queue_delete(queue)
        connection.close()
    return results


def run(services: Services, quick: bool = True, backends=BACKENDS, process_counts=(1, 2, 4), jobs: int | None = None,
        messages: int | None = None) -> list[Result]:
    jobs = jobs or (2000 if quick else 10000)
    messages = messages or (2000 if quick else 10000)
    return (run_sql_limits(services, backends, process_counts, jobs)
            + run_rabbitmq_limits(services, messages))


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--jobs", type=int, help="jobs per SQL measurement")
    parser.add_argument("--messages", type=int, help="messages per RabbitMQ measurement")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only these SQL back ends")
    args = parser.parse_args(argv)
    results = run(Services.from_environment(), args.quick, tuple(args.backend or BACKENDS), jobs=args.jobs,
                  messages=args.messages)
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
