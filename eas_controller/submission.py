"""Submitting a task chain: validate and expand it, then write it in one transaction.

Used by ``submit.py`` and every other way in (a bad file leaves nothing behind: the whole plan is written
by :mod:`eas_controller.store.plans` in the one transaction). With ``resume`` (``submit.py --resume`` or
the chain's ``"resume": true``) the tasks unchanged since a succeeded run take that run's results over
instead of running (:mod:`eas_controller.resume`).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from eas_controller import resume as resuming
from eas_controller.chains import Plan
from eas_controller.store.plans import check_inputs, create_job, write_plan

__all__ = ["check_inputs", "outside_identities", "plan_resume", "submit_chain", "submit_plan"]


def submit_plan(connection: Connection, plan: Plan, max_attempts: dict[str, int | None] | None = None,
                decisions: list | None = None) -> tuple[int, dict[int, int]]:
    """Create the job and its tasks; the caller's transaction makes it all-or-nothing. ``decisions`` (from
    :func:`plan_resume`) name the tasks that are reused instead of run."""
    job_id = create_job(connection, plan.job_name, plan.source)
    ids = write_plan(connection, plan, job_id, max_attempts, resuming.reuse_map(decisions or []))
    if decisions:
        resuming.take_over(connection, decisions, ids)
    return job_id, ids


def plan_resume(connection: Connection, plan: Plan, strict: bool, identities: dict[str, str] | None = None) -> list:
    """The resume decisions for ``plan``. ``strict`` (the ``--resume`` flag): a job name with no earlier job
    is an error; otherwise (the chain's ``"resume": true``) every task of it is new. ``identities``: from
    :func:`outside_identities`, looked up before the transaction."""
    if strict:
        resuming.check_earlier_job(connection, plan)
    return resuming.decide(connection, plan, identities)


def outside_identities(plan: Plan, s3_endpoint_url: str | None = None) -> dict[str, str]:
    """What the data the plan reads by URI from outside holds now (network look-ups: call it outside a
    transaction, and only when resuming)."""
    return resuming.source_identities(resuming.outside_inputs(plan), s3_endpoint_url)


def resume_requested(chain: dict, flag: bool) -> tuple[bool, bool]:
    """(resume?, strict?) from the ``--resume`` flag and the chain's ``resume`` field."""
    return bool(flag or chain.get("resume") is True), bool(flag)


def submit_chain(engine, chain: dict, source: str, job_name: str | None = None, resume: bool = False,
                 with_decisions: bool = False, s3_endpoint_url: str | None = None):
    """Validate and expand ``chain``, then write it in one transaction; returns (job id, plan), and the
    resume decisions too with ``with_decisions`` (an empty list when not resuming)."""
    from eas_controller.chains import expand_chain
    from eas_controller.database.engine import read_transaction, write_transaction
    from eas_controller.registry import load_registry

    with read_transaction(engine) as connection:
        registry = load_registry(connection)
    plan = expand_chain(chain, source, registry, job_name)
    active, strict = resume_requested(chain, resume)
    decisions: list = []
    identities = outside_identities(plan, s3_endpoint_url) if active else {}
    with write_transaction(engine) as connection:
        if active:
            decisions = plan_resume(connection, plan, strict, identities)
        job_id, _ids = submit_plan(connection, plan, {name: t.max_attempts for name, t in registry.items()},
                                   decisions)
    return (job_id, plan, decisions) if with_decisions else (job_id, plan)
