#!/usr/bin/env python3
"""Peers on the same work: N no-op jobs through RQ (Redis) and Celery (RabbitMQ), on this machine.

- RQ: two ``rq worker`` processes, once with ``SimpleWorker`` (runs jobs in the worker process) and once
  with the default ``Worker`` (forks a work horse per job); Redis on loopback; jobs enqueued in
  pipelines of 1,000 (``enqueue_many``).
- Celery: one ``celery worker`` with the prefork pool of 2, RabbitMQ broker, no result backend; once with
  its defaults and once with its settings for work that must not be lost (``acks_late``, prefetch 1).
Workers start first and sit idle; the clock runs from the first enqueue until the last job has
appended its byte to the counter file (see ``peer_tasks.py``). Each run uses a queue name of its own
and removes what it created (RQ: only keys holding that name; RabbitMQ: that queue).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import signal
import subprocess
import time
import urllib.parse
import uuid

from bench.common import PROJECT_ROOT, Result, Services, unavailable_reason


def _wait_for_count(path: str, jobs: int, timeout: float, processes: list) -> float:
    """Poll the counter file until it holds ``jobs`` bytes; returns the time it did."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and os.path.getsize(path) >= jobs:
            return time.time()
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError("a peer worker exited with status %s" % process.returncode)
        time.sleep(0.02)
    raise RuntimeError("the peer did not finish %d jobs within %d s" % (jobs, timeout))


def _stop(processes: list, wait: float = 30) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- RQ -------------------------------------------------------------------------------------------------------

def _rq_cleanup(connection, name: str) -> int:
    """Delete the keys this run made (every one holds the unique queue name) and its queue registration."""
    deleted = 0
    for key in connection.scan_iter(match="*%s*" % name, count=1000):
        deleted += connection.delete(key)
    connection.srem("rq:queues", "rq:queue:%s" % name)
    for member in list(connection.smembers("rq:workers")):
        if name in member.decode(errors="replace"):
            connection.srem("rq:workers", member)
    return deleted


def run_rq(services: Services, jobs: int, worker_class: str, workers: int = 2, timeout: float = 1800) -> Result:
    from redis import Redis
    from rq import Queue, Worker

    from bench import peer_tasks

    label = "RQ %s" % worker_class.rsplit(".", 1)[-1]
    name = "eas_bench_rq_%s" % uuid.uuid4().hex[:12]
    connection = Redis.from_url(services.redis_url)
    queue = Queue(name, connection=connection)
    counter = os.path.join(services.work_dir, name + ".count")
    log = open(os.path.join(services.work_dir, name + ".log"), "w")
    processes = [subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "rq"), "worker", "--url", services.redis_url, "--name",
         "%s-w%d" % (name, number), "-w", worker_class, "--path", PROJECT_ROOT, "--logging_level", "WARNING",
         "--disable-job-desc-logging", name],
        cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for number in range(1, workers + 1)]
    try:
        deadline = time.time() + 60
        while len(Worker.all(queue=queue)) < workers:
            if time.time() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("RQ workers did not start; see %s" % log.name)
            time.sleep(0.1)
        started = time.time()
        for start in range(0, jobs, 1000):
            with connection.pipeline() as pipe:
                queue.enqueue_many([Queue.prepare_data(peer_tasks.noop, args=(counter,), job_id="%s-%d" % (name, n))
                                    for n in range(start, min(jobs, start + 1000))], pipeline=pipe)
                pipe.execute()
        enqueued = time.time()
        finished = _wait_for_count(counter, jobs, timeout, processes)
    finally:
        _stop(processes)
        _rq_cleanup(connection, name)
        log.close()
    return Result("peers", "%s: %s no-op jobs, %d workers" % (label, "{:,}".format(jobs), workers), "redis",
                  jobs / (finished - started), "jobs/s", processes=workers, jobs=jobs,
                  extra=dict(elapsed_s=round(finished - started, 2), enqueue_s=round(enqueued - started, 2)))


# -- Celery ---------------------------------------------------------------------------------------------------

def _celery_broker(amqp_url: str) -> str:
    """Celery spells the default vhost as ``//``, pika as ``/%2F``."""
    parsed = urllib.parse.urlparse(amqp_url)
    vhost = urllib.parse.unquote(parsed.path[1:]) or "/"
    credentials = parsed.netloc.rsplit("@", 1)[0] if "@" in parsed.netloc else "guest:guest"
    return "amqp://%s@%s:%d/%s" % (credentials, parsed.hostname, parsed.port or 5672,
                                   "/" if vhost == "/" else urllib.parse.quote(vhost, safe=""))


def _consumers(amqp_url: str, queue: str) -> int:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.consumer_count
    except Exception:  # not declared yet
        return 0
    finally:
        if connection.is_open:
            connection.close()


def run_celery(services: Services, jobs: int, concurrency: int = 2, timeout: float = 1800, reliable: bool = False
               ) -> Result:
    """``reliable``: the worker acknowledges each job after it ran (``acks_late``) and prefetches one
    (``worker_prefetch_multiplier=1``), so a worker that dies loses no job; otherwise Celery's defaults."""
    import pika

    name = "eas_bench_celery_%s" % uuid.uuid4().hex[:12]
    counter = os.path.join(services.work_dir, name + ".count")
    broker = _celery_broker(services.amqp_url)
    environment = dict(os.environ, EAS_BENCH_CELERY_BROKER=broker, PYTHONPATH=PROJECT_ROOT,
                       EAS_BENCH_CELERY_RELIABLE="1" if reliable else "0")
    os.environ["EAS_BENCH_CELERY_BROKER"] = broker
    from bench import peer_tasks

    peer_tasks.celery_app.conf.broker_url = broker
    log = open(os.path.join(services.work_dir, name + ".log"), "w")
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "celery"), "-A", "bench.peer_tasks:celery_app", "worker",
         "--pool", "prefork", "--concurrency", str(concurrency), "-Q", name, "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", name + "@%h"],
        cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while _consumers(services.amqp_url, name) < 1:
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError("the Celery worker did not start; see %s" % log.name)
            time.sleep(0.2)
        started = time.time()
        with peer_tasks.celery_app.producer_or_acquire() as producer:
            for _ in range(jobs):
                peer_tasks.celery_noop.apply_async(args=(counter,), queue=name, producer=producer)
        enqueued = time.time()
        finished = _wait_for_count(counter, jobs, timeout, [process])
    finally:
        _stop([process])
        log.close()
        try:
            connection = pika.BlockingConnection(pika.URLParameters(services.amqp_url))
            connection.channel().queue_delete(name)
            connection.close()
        except Exception:
            pass
    return Result("peers", "Celery prefork(%d)%s: %s no-op jobs" % (
        concurrency, ", acks_late + prefetch 1" if reliable else "", "{:,}".format(jobs)), "amqp",
                  jobs / (finished - started), "jobs/s", processes=concurrency, jobs=jobs,
                  extra=dict(elapsed_s=round(finished - started, 2), enqueue_s=round(enqueued - started, 2)))


def run(services: Services, quick: bool = True, jobs: int | None = None, forking_jobs: int | None = None
        ) -> list[Result]:
    jobs = jobs or (3000 if quick else 20000)
    forking_jobs = forking_jobs or (500 if quick else 2000)
    results = []
    redis_reason = unavailable_reason(services, "redis")
    # the forking Worker runs ~25 jobs/s here: a smaller batch measures it as well in far less time
    for worker_class, count in (("rq.worker.SimpleWorker", jobs), ("rq.worker.Worker", min(jobs, forking_jobs))):
        label = "RQ %s: %s no-op jobs, 2 workers" % (worker_class.rsplit(".", 1)[-1], "{:,}".format(count))
        if redis_reason:
            results.append(Result.skipped("peers", label, "redis", redis_reason, "jobs/s", processes=2))
            continue
        results.append(run_rq(services, count, worker_class))
    amqp_reason = unavailable_reason(services, "amqp")
    if amqp_reason:
        results.append(Result.skipped("peers", "Celery prefork(2): no-op jobs", "amqp", amqp_reason, "jobs/s",
                                      processes=2))
    else:
        try:
            results.append(run_celery(services, jobs))
            results.append(run_celery(services, jobs, reliable=True))
        finally:
            from bench import peer_tasks

            peer_tasks.celery_app.pool.force_close_all()  # once: a closed pool cannot publish again
    return results


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--jobs", type=int, help="jobs per peer (default 3,000 quick, 20,000 full)")
    parser.add_argument("--forking-jobs", type=int, help="jobs for RQ's forking Worker (default 500 quick, 2,000)")
    args = parser.parse_args(argv)
    print_results(run(Services.from_environment(), args.quick, args.jobs, args.forking_jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
