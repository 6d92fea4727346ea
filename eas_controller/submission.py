"""Submitting a task chain: validate and expand it, then write it in one transaction.

Used by ``submit.py`` and every other way in (a bad file leaves nothing behind: the whole plan is written
by :mod:`eas_controller.store.plans` in the one transaction).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from eas_controller.chains import Plan
from eas_controller.store.plans import check_inputs, create_job, write_plan

__all__ = ["check_inputs", "submit_chain", "submit_plan"]


def submit_plan(connection: Connection, plan: Plan, max_attempts: dict[str, int | None] | None = None) -> tuple[int, dict[int, int]]:
    """Create the job and its tasks; the caller's transaction makes it all-or-nothing."""
    job_id = create_job(connection, plan.job_name, plan.source)
    return job_id, write_plan(connection, plan, job_id, max_attempts)


def submit_chain(engine, chain: dict, source: str, job_name: str | None = None) -> tuple[int, Plan]:
    """Validate and expand ``chain``, then write it in one transaction; returns (job id, plan)."""
    from eas_controller.chains import expand_chain
    from eas_controller.database.engine import read_transaction, write_transaction
    from eas_controller.registry import load_registry

    with read_transaction(engine) as connection:
        registry = load_registry(connection)
    plan = expand_chain(chain, source, registry, job_name)
    with write_transaction(engine) as connection:
        job_id, _ids = submit_plan(connection, plan, {name: t.max_attempts for name, t in registry.items()})
    return job_id, plan
