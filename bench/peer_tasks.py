"""The no-op job that RQ and Celery run in ``peers.py``, and the Celery application that serves it.

Each job appends one byte to a counter file (a local ``write``: microseconds) so the benchmark knows
when the last one finished without a result backend or a broker round trip.
"""

import os

from celery import Celery

celery_app = Celery("eas_bench_peers", broker=os.environ.get("EAS_BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
celery_app.conf.update(task_ignore_result=True, result_backend=None, worker_hijack_root_logger=False,
                       broker_connection_retry_on_startup=True)
if os.environ.get("EAS_BENCH_CELERY_RELIABLE") == "1":
    # Celery's settings for work that must not be lost: acknowledge after the job ran, take one at a time
    celery_app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)


def noop(counter_path: str) -> None:
    with open(counter_path, "ab") as handle:
        handle.write(b".")


celery_noop = celery_app.task(name="eas_bench.noop")(noop)
