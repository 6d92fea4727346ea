"""The scheduler daemon's queue-table maintenance: a real VACUUM of eas_sql_queue on PostgreSQL, nothing sent
elsewhere."""

from __future__ import annotations

import time

import sqlalchemy as sa

from eas_controller.scheduler.maintenance import QueueVacuum


def vacuum_count(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'eas_sql_queue'")).scalar() or 0


def test_the_queue_table_is_vacuumed_on_postgresql_only(eas):
    vacuum = QueueVacuum(eas.engine, every=60.0, dead_rows=0)
    if eas.backend != "postgresql":
        assert not vacuum.enabled and not vacuum.run_if_due() and vacuum.vacuums == 0
        return
    before = vacuum_count(eas.engine)
    assert vacuum.run_if_due() and vacuum.vacuums == 1
    assert not vacuum.run_if_due()  # checked a moment ago: the next look waits `every` seconds
    assert vacuum.run_if_due(now=time.time() + 61) and vacuum.vacuums == 2
    deadline = time.time() + 30  # the server's statistics catch up within a second or so; a liveness bound
    while vacuum_count(eas.engine) < before + 2 and time.time() < deadline:
        time.sleep(0.2)
    assert vacuum_count(eas.engine) >= before + 2


def test_a_table_with_few_dead_rows_is_left_alone(eas):
    vacuum = QueueVacuum(eas.engine, every=0.0, dead_rows=10**9)
    assert not vacuum.run_if_due() and vacuum.vacuums == 0
