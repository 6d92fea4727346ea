"""The store's state-changing operations: from each state they may move a row from, they move it; from any
other state they leave the row untouched and say so. And no module outside the store writes its tables.

Each test puts one row in every state (tasks: one per task state; attempts: one per attempt state, held by
this test's worker) and runs the operation on all of them at once, on every back end.
"""

from __future__ import annotations

import os
import re
import time

import pytest
import sqlalchemy as sa

from conftest import PROJECT_ROOT
from eas_controller import states
from eas_controller.database.engine import write_transaction
from eas_controller.database.schema import attempts, jobs, tasks
from eas_controller.retries import RetryPolicy
from eas_controller.store import attempts as attempt_store
from eas_controller.store import readiness
from eas_controller.store import reuse as reuse_store
from eas_controller.store import tasks as task_store
from eas_controller.store import workers as worker_store
from eas_controller.store.moves import Moved

NOW = 1_000_000.0


def add_tasks(connection, wanted_states, **columns) -> dict[str, int]:
    """One plain task per state; returns {state: task id}."""
    job_id = connection.execute(jobs.insert().values(name="store", source="test", submitted_at=NOW)).inserted_primary_key[0]
    ids = {}
    for state in wanted_states:
        values = dict(job_id=job_id, chain_path="task_list[0]", task_type="sleep", is_control=False, job_name="store",
                      working_directory="", description="{}", metadata="{}", state=state, priority=0,
                      unmet_dependencies=0, attempt_count=1, created_at=NOW, updated_at=NOW)
        values.update(columns)
        ids[state] = connection.execute(tasks.insert().values(**values)).inserted_primary_key[0]
    return ids


def task_states(connection, ids) -> dict[int, str]:
    return dict(connection.execute(sa.select(tasks.c.id, tasks.c.state).where(tasks.c.id.in_(list(ids)))).all())


def check_moves(connection, ids: dict[str, int], moved: Moved, sources, expected_after, table=tasks):
    """Rows in ``sources`` moved (and are now ``expected_after``, a state or a function of the old one); the
    others are reported with their state and unchanged."""
    after = dict(connection.execute(sa.select(table.c.id, table.c.state).where(table.c.id.in_(list(ids.values())))).all())
    for state, row_id in ids.items():
        if state in sources:
            assert row_id in moved.moved, (state, moved)
            want = expected_after(state) if callable(expected_after) else expected_after
            assert after[row_id] == want, (state, after[row_id], want)
        else:
            assert row_id not in moved.moved, (state, moved)
            assert moved.refused[row_id].split(",")[0] == state, (state, moved.refused)
            assert after[row_id] == state, (state, after[row_id])


TASK_OPERATIONS = {
    # name: (sources, state after, call(connection, ids) -> Moved)
    "mark_queued": (task_store.QUEUE_FROM, states.QUEUED,
                    lambda c, ids: task_store.mark_queued(c, ids, NOW)),
    "mark_running": (task_store.RUN_FROM, states.RUNNING,
                     lambda c, ids: task_store.mark_running(c, ids, NOW)),
    "finish_done": (task_store.DONE_FROM, states.DONE,
                    lambda c, ids: task_store.finish_done(c, ids, NOW)[0]),
    "finish_failed": (task_store.FAIL_FROM, states.FAILED,
                      lambda c, ids: task_store.finish_failed(c, ids, "broken", NOW)),
    "schedule_retry": (task_store.RETRY_FROM, states.READY,
                       lambda c, ids: _each(lambda i: task_store.schedule_retry(c, i, NOW + 5, "again", NOW), ids)),
    "start_expansion": (task_store.EXPAND_FROM, states.RUNNING,
                        lambda c, ids: _each(lambda i: task_store.start_expansion(c, i, 1, 2, NOW), ids)),
    "store_evaluated": (task_store.EVALUATE_FROM, states.READY,
                        lambda c, ids: _each(lambda i: task_store.store_evaluated(c, i, {"x": 1}), ids)),
    "release_running": (task_store.RELEASE_FROM, states.READY,
                        lambda c, ids: task_store.release_running(c, ids, NOW)),
    "unqueue": (task_store.UNQUEUE_FROM, states.READY,
                lambda c, ids: task_store.unqueue(c, ids, states.READY, NOW)),
    "cancel": (task_store.CANCEL_FROM, states.CANCELLED,
               lambda c, ids: task_store.cancel(c, ids, "stop", NOW)),
    "ready_orphans": (task_store.ORPHAN_FROM, states.READY,
                      lambda c, ids: task_store.ready_orphans(c, ids, NOW)),
    "take_over": (reuse_store.REUSE_FROM, states.DONE,
                  lambda c, ids: reuse_store.take_over(c, [(i, _earlier(i)) for i in ids], NOW)),
}


def _earlier(task_id: int) -> reuse_store.Earlier:
    """An earlier run to take over (the task itself, which made nothing: only the move is under test)."""
    return reuse_store.Earlier(task_id=task_id, job_id=1, chain_path="x", task_type="sleep", type_version="1",
                               job_name="store", working_directory="", description={}, fingerprint=None,
                               attempt_id=None)

SELECTION_OPERATIONS = {
    # operations on a recovery selection: they only ever consider rows in their sources, so the test checks
    # that every other row is left as it was
    "hold": (task_store.HOLD_FROM, states.HELD, lambda c, cond: task_store.hold(c, cond, NOW)),
    "unhold": (task_store.UNHOLD_FROM, states.READY, lambda c, cond: task_store.unhold(c, cond, NOW)),
    "reschedule_failed": (task_store.RESCHEDULE_FROM, states.READY,
                          lambda c, cond: task_store.reschedule_failed(c, cond, NOW)),
    "clear_backoff": (task_store.BACKOFF_FROM, states.READY, lambda c, cond: task_store.clear_backoff(c, cond, NOW - 1)),
}


def _each(operation, ids) -> Moved:
    result = Moved()
    for row_id in ids:
        result.extend(operation(row_id))
    return result


@pytest.mark.parametrize("operation", sorted(TASK_OPERATIONS))
def test_task_operation_moves_only_from_its_states(eas, operation):
    sources, after, call = TASK_OPERATIONS[operation]
    with write_transaction(eas.engine) as connection:
        ids = add_tasks(connection, states.TASK_STATES)
        moved = call(connection, sorted(ids.values()))
        check_moves(connection, ids, moved, sources, after)
    assert set(sources) < set(states.TASK_STATES)  # every operation refuses something


@pytest.mark.parametrize("operation", sorted(SELECTION_OPERATIONS))
def test_selection_operation_moves_only_from_its_states(eas, operation):
    sources, after, call = SELECTION_OPERATIONS[operation]
    with write_transaction(eas.engine) as connection:
        ids = add_tasks(connection, states.TASK_STATES, not_before=NOW)
        moved = call(connection, tasks.c.job_name == "store")
        after_states = task_states(connection, ids.values())
    assert sorted(moved.moved) == sorted(ids[state] for state in sources)
    for state, row_id in ids.items():
        assert after_states[row_id] == (after if state in sources else state), (state, after_states[row_id])


def ended_attempts(connection, task_id: int, *attempt_states: str) -> None:
    for number, state in enumerate(attempt_states, 1):
        connection.execute(attempts.insert().values(task_id=task_id, number=number, task_type="sleep", state=state,
                                                    queue="sql", queued_at=NOW))


def test_retry_or_fail_counts_own_failures_and_lost_attempts_apart(eas):
    policy = RetryPolicy(default_max_attempts=2, backoff_s=5.0, max_lost_attempts=3)
    with write_transaction(eas.engine) as connection:
        ids = {name: add_tasks(connection, [states.RUNNING])[states.RUNNING]
               for name in ("first", "last", "lost_twice", "lost_thrice", "failed_after_losses")}
        done = add_tasks(connection, [states.DONE])[states.DONE]
        ended_attempts(connection, ids["first"], states.A_FAILED)
        ended_attempts(connection, ids["last"], states.A_FAILED, states.A_FAILED)
        ended_attempts(connection, ids["lost_twice"], states.A_STALLED, states.A_STALLED)
        ended_attempts(connection, ids["lost_thrice"], states.A_STALLED, states.A_STALLED, states.A_STALLED)
        ended_attempts(connection, ids["failed_after_losses"], states.A_STALLED, states.A_STALLED, states.A_FAILED)
        ended_attempts(connection, done, states.A_FAILED)
        assert task_store.retry_or_fail(connection, ids["first"], "exit status 1", NOW, policy) is True
        assert task_store.retry_or_fail(connection, ids["last"], "exit status 1", NOW, policy) is False
        assert task_store.retry_or_fail(connection, ids["lost_twice"], "lease expired", NOW, policy, lost=True) is True
        assert task_store.retry_or_fail(connection, ids["lost_thrice"], "lease expired", NOW, policy, lost=True) is False
        assert task_store.retry_or_fail(connection, ids["failed_after_losses"], "exit 1", NOW, policy) is True
        task_store.retry_or_fail(connection, done, "exit status 1", NOW, policy)  # a done task is never re-queued
        rows = {row.id: row for row in connection.execute(sa.select(tasks).where(tasks.c.id.in_([*ids.values(), done])))}
    first, last = rows[ids["first"]], rows[ids["last"]]
    assert first.state == states.READY and first.not_before == NOW + 5.0
    assert last.state == states.FAILED and "attempt 2 of 2" in last.error_text
    assert rows[ids["lost_twice"]].state == states.READY  # two lost attempts never count against max_attempts
    thrice = rows[ids["lost_thrice"]]
    assert thrice.state == states.FAILED and thrice.error_text.startswith("the worker running it was lost 3 times")
    assert rows[ids["failed_after_losses"]].state == states.READY  # its first own failure of two
    assert rows[done].state == states.DONE


def test_count_down_makes_waiting_tasks_ready_and_leaves_held_ones_held(eas):
    with write_transaction(eas.engine) as connection:
        ids = add_tasks(connection, [states.WAITING, states.HELD, states.CANCELLED], unmet_dependencies=1)
        readiness.count_down(connection, {row_id: 1 for row_id in ids.values()}, NOW)
        after = task_states(connection, ids.values())
    assert after == {ids[states.WAITING]: states.READY, ids[states.HELD]: states.HELD,
                     ids[states.CANCELLED]: states.CANCELLED}


# -- attempts --------------------------------------------------------------------------------------------------

def add_attempts(connection, worker_id: int) -> dict[str, int]:
    """One attempt per attempt state, held by ``worker_id``, each of its own running (or queued) task."""
    ids = {}
    for state in states.ATTEMPT_STATES:
        task_state = states.QUEUED if state == states.A_QUEUED else states.RUNNING
        task_id = add_tasks(connection, [task_state])[task_state]
        ids[state] = connection.execute(attempts.insert().values(
            task_id=task_id, number=1, task_type="sleep", state=state, queue="sql", queued_at=NOW, started_at=NOW,
            lease_expires_at=NOW + 60, worker_id=worker_id, worker_name="w", host="h", pid=1)).inserted_primary_key[0]
    return ids


def worker(connection) -> int:
    return worker_store.register(connection, "store-test", "host", os.getpid(), ["sleep"], 1, 0, 1, 1)


def task_of(connection, attempt_id: int) -> int:
    return connection.execute(sa.select(attempts.c.task_id).where(attempts.c.id == attempt_id)).scalar()


ATTEMPT_OPERATIONS = {
    "renew_leases": (attempt_store.RENEW_FROM, states.A_RUNNING,
                     lambda c, ids, me: attempt_store.renew_leases(c, ids, me, NOW + 120)),
    "stall": (attempt_store.STALL_FROM, states.A_STALLED,
              lambda c, ids, me: _each(lambda i: attempt_store.stall(c, i, "lease expired", NOW), ids)),
    "release": (attempt_store.RELEASE_FROM, states.A_CANCELLED,
                lambda c, ids, me: _each(lambda i: attempt_store.release(c, i, task_of(c, i), NOW, "released"), ids)),
    "cancel_running": (attempt_store.CANCEL_RUNNING_FROM, states.A_CANCELLED,
                       lambda c, ids, me: attempt_store.cancel_running(c, ids, "cancelled", NOW)),
    "finish": (attempt_store.FINISH_FROM, states.A_SUCCEEDED, lambda c, ids, me: attempt_store.finish(
        c, [dict(b_id=i, b_state=states.A_SUCCEEDED, b_started_at=NOW, b_ended_at=NOW + 1, b_exit_status=0, b_wall_s=1.0,
                 b_cpu_s=0.5, b_cpu_children_s=0.0, b_error_text=None) for i in ids], me,
        {i: row.state for i, row in attempt_store.lock_for_completion(c, ids).items()})),
}


@pytest.mark.parametrize("operation", sorted(ATTEMPT_OPERATIONS))
def test_attempt_operation_moves_only_from_its_states(eas, operation):
    sources, after, call = ATTEMPT_OPERATIONS[operation]
    with write_transaction(eas.engine) as connection:
        me = worker(connection)
        ids = add_attempts(connection, me)
        moved = call(connection, sorted(ids.values()), me)
        check_moves(connection, ids, moved, sources, after, table=attempts)


def test_finishing_a_stalled_attempt_leaves_it_stalled_and_says_so(eas):
    """The case fencing exists for: the lease expired and the attempt was stalled before the result came."""
    with write_transaction(eas.engine) as connection:
        me = worker(connection)
        stalled = add_attempts(connection, me)[states.A_STALLED]
        moved = ATTEMPT_OPERATIONS["finish"][2](connection, [stalled], me)
        state = connection.execute(sa.select(attempts.c.state).where(attempts.c.id == stalled)).scalar()
    assert moved.moved == [] and moved.refused == {stalled: states.A_STALLED} and state == states.A_STALLED


def test_attempts_held_by_another_worker_are_not_renewed_nor_released(eas):
    with write_transaction(eas.engine) as connection:
        me, other = worker(connection), worker(connection)
        theirs = add_attempts(connection, other)[states.A_RUNNING]
        renewed = attempt_store.renew_leases(connection, [theirs], me, NOW + 999)
        released = attempt_store.release(connection, theirs, task_of(connection, theirs), NOW, "x",
                                         current=attempt_store.lock_owned(connection, [theirs], me))
        lease = connection.execute(sa.select(attempts.c.lease_expires_at).where(attempts.c.id == theirs)).scalar()
    assert renewed.moved == [] and "held by worker %d" % other in renewed.refused[theirs]
    assert released.moved == [] and lease == NOW + 60


def test_start_claims_only_queued_attempts_and_marks_their_tasks_running(eas):
    with write_transaction(eas.engine) as connection:
        me = worker(connection)
        ids = add_attempts(connection, None)
        claimed = attempt_store.start(connection, sorted(ids.values()), dict(id=me, name="w", host="h", pid=1), 60)
        task_state = task_states(connection, [task_of(connection, ids[states.A_QUEUED])])
        after = dict(connection.execute(sa.select(attempts.c.id, attempts.c.state)).all())
    assert [claim["attempt_id"] for claim in claimed] == [ids[states.A_QUEUED]]
    assert list(task_state.values()) == [states.RUNNING]
    assert after == {row_id: (states.A_RUNNING if state == states.A_QUEUED else state) for state, row_id in ids.items()}


def test_cancel_queued_takes_only_queued_attempts(eas):
    with write_transaction(eas.engine) as connection:
        ids = add_attempts(connection, None)
        taken = attempt_store.cancel_queued(connection, sorted(ids.values()), "emptied", time.time())
        after = dict(connection.execute(sa.select(attempts.c.id, attempts.c.state)).all())
    assert [attempt for attempt, _task in taken] == [ids[states.A_QUEUED]]
    assert after == {row_id: (states.A_CANCELLED if state == states.A_QUEUED else state) for state, row_id in ids.items()}


def test_every_declared_move_is_in_the_table_of_transitions():
    with pytest.raises(ValueError, match="cannot go from 'done' to 'ready'"):
        states.task_move(states.DONE, states.READY)
    with pytest.raises(ValueError, match="cannot go from 'stalled' to 'succeeded'"):
        states.attempt_move(states.A_STALLED, states.A_SUCCEEDED)


# -- nothing outside the store writes its tables -----------------------------------------------------------------

STORE_TABLES = ("tasks", "attempts", "sql_queue", "workers", "control_progress")
WRITE = re.compile(r"\b(%s)\s*\.\s*(insert|update|delete)\s*\(" % "|".join(STORE_TABLES))
RAW_SQL = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+eas_(%s)\b" % "|".join(STORE_TABLES), re.IGNORECASE)


def test_no_module_outside_the_store_writes_the_store_tables():
    package = os.path.join(PROJECT_ROOT, "eas_controller")
    offenders = []
    for folder, _dirs, files in os.walk(package):
        if os.path.relpath(folder, package).split(os.sep)[0] in ("store",):
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if WRITE.search(line) or RAW_SQL.search(line):
                        offenders.append("%s:%d: %s" % (os.path.relpath(path, PROJECT_ROOT), number, line.strip()))
    assert offenders == []


def test_the_grep_would_see_a_write():
    assert WRITE.search("connection.execute(tasks.update().where(tasks.c.id == 1))")
    assert WRITE.search("connection.execute(sql_queue.delete())")
    assert RAW_SQL.search("UPDATE eas_attempts SET state = 'done'")
    assert not WRITE.search("task_store.update_something(connection)")
