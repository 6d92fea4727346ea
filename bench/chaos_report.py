"""What the chaos run checks and reports once the pipeline has finished (or stopped moving).

Integrity: every worker task done by exactly one succeeded attempt; every product's latest version made by
that attempt, its file present and its md5 the one recorded in ``eas_product_versions``. Cost: how many
attempts ran again and how many seconds of attempts that did not succeed the faults cost.
"""

from __future__ import annotations

import collections
import hashlib
import os

import sqlalchemy as sa

from eas_controller.database.schema import attempts, product_versions, products, tasks

FAULT_KINDS = ("worker_kill", "stop", "db_kill", "broker_restart")


def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(engine, data_dir: str) -> dict:
    """The integrity and cost figures of the finished run, read from the database and the data directory."""
    with engine.connect() as connection:
        task_rows = connection.execute(sa.select(tasks.c.id, tasks.c.state, tasks.c.name)
                                       .where(tasks.c.is_control.is_(False))).all()
        attempt_rows = connection.execute(sa.select(
            attempts.c.id, attempts.c.task_id, attempts.c.state, attempts.c.started_at, attempts.c.ended_at,
            attempts.c.lease_expires_at, attempts.c.wall_s)).all()
        product_rows = connection.execute(
            sa.select(products.c.task_id, products.c.relative_path, products.c.state, product_versions.c.attempt_id,
                      product_versions.c.path, product_versions.c.md5)
            .select_from(products.outerjoin(product_versions, product_versions.c.id == products.c.latest_version_id))
        ).all()
    worker_tasks = {row.id: row for row in task_rows}
    succeeded = collections.defaultdict(list)
    per_task = collections.Counter()
    by_state = collections.Counter()
    wasted = 0.0
    for row in attempt_rows:
        if row.task_id not in worker_tasks:
            continue
        per_task[row.task_id] += 1
        by_state[row.state] += 1
        if row.state == "succeeded":
            succeeded[row.task_id].append(row.id)
        elif row.started_at is not None:
            if row.wall_s is not None:
                wasted += row.wall_s
            else:
                end = row.ended_at or row.lease_expires_at or row.started_at
                wasted += max(0.0, end - row.started_at)
    states = collections.Counter(row.state for row in task_rows)
    lost = sorted(row.name or str(row.id) for row in task_rows if row.state != "done")
    twice = sorted(task_id for task_id, ids in succeeded.items() if len(ids) > 1)
    done_without = sorted(row.id for row in task_rows if row.state == "done" and not succeeded.get(row.id))
    product_figures = _check_products(product_rows, worker_tasks, succeeded, data_dir)
    return dict(
        tasks=len(task_rows), task_states=dict(sorted(states.items())), attempts=sum(per_task.values()),
        attempt_states=dict(sorted(by_state.items())),
        reruns=sum(max(0, count - 1) for count in per_task.values()),
        tasks_rerun=sum(1 for count in per_task.values() if count > 1),
        work_rerun_s=round(wasted, 1), lost_tasks=len(lost), lost_examples=lost[:10],
        succeeded_twice=len(twice), succeeded_twice_examples=twice[:10],
        done_without_success=len(done_without), products=product_figures)


def _check_products(rows, worker_tasks, succeeded, data_dir: str) -> dict:
    figures = dict(checked=0, md5_ok=0, md5_mismatch=0, missing_file=0, not_made=0, wrong_attempt=0, examples=[])
    for row in rows:
        if row.task_id not in worker_tasks:
            continue
        figures["checked"] += 1
        if row.state != "made" or row.path is None:
            figures["not_made"] += 1
            _example(figures, "not made: %s (%s)" % (row.relative_path, row.state))
            continue
        path = row.path if os.path.isabs(row.path) else os.path.join(data_dir, row.path)
        if not os.path.exists(path):
            figures["missing_file"] += 1
            _example(figures, "missing: %s" % path)
            continue
        if md5_of(path) != row.md5:
            figures["md5_mismatch"] += 1
            _example(figures, "md5 differs: %s" % path)
        else:
            figures["md5_ok"] += 1
        with open(path) as handle:
            first = handle.readline().split()
        winners = succeeded.get(row.task_id, [])
        named = int(first[3]) if len(first) > 3 and first[3].isdigit() else None
        if len(winners) != 1 or row.attempt_id != winners[0] or named != winners[0] or first[1] != str(row.task_id):
            figures["wrong_attempt"] += 1
            _example(figures, "%s made by attempt %s, recorded %s, succeeded %s" % (path, named, row.attempt_id, winners))
    return figures


def _example(figures: dict, text: str) -> None:
    if len(figures["examples"]) < 10:
        figures["examples"].append(text)


def problems_of(report: dict) -> list[str]:
    """What makes the run a failure: anything lost, done twice, or a product that is not what was recorded."""
    found = []
    if report["lost_tasks"]:
        states = ", ".join("%s %d" % item for item in report["task_states"].items() if item[0] != "done")
        found.append("%d task(s) not done (%s)" % (report["lost_tasks"], states))
    if report["succeeded_twice"]:
        found.append("%d task(s) succeeded twice" % report["succeeded_twice"])
    if report["done_without_success"]:
        found.append("%d task(s) done without a succeeded attempt" % report["done_without_success"])
    figures = report["products"]
    for key in ("md5_mismatch", "missing_file", "not_made", "wrong_attempt"):
        if figures[key]:
            found.append("%d product(s) %s" % (figures[key], key.replace("_", " ")))
    if report.get("stuck"):
        found.append("the run stopped moving: %s" % report["stuck"])
    return found


def table(report: dict) -> str:
    from tabulate import tabulate

    faults = report["faults"]
    products_figures = report["products"]
    rows = [
        ("tasks (worker tasks, file products)", report["tasks"]),
        ("faults injected", "%d (%s)" % (sum(faults.values()),
                                         ", ".join("%s %d" % (kind, faults[kind]) for kind in FAULT_KINDS))),
        ("attempts", "%d (%s)" % (report["attempts"], ", ".join("%s %d" % item
                                                               for item in report["attempt_states"].items()))),
        ("reruns (attempts beyond the first)", "%d, of %d tasks" % (report["reruns"], report["tasks_rerun"])),
        ("work rerun (s of attempts that did not succeed)", report["work_rerun_s"]),
        ("work rerun per fault (s)", report["work_rerun_per_fault_s"]),
        ("time to finish (s)", report["time_to_finish_s"]),
        ("lost tasks (not done)", report["lost_tasks"]),
        ("tasks succeeded twice", report["succeeded_twice"]),
        ("products: md5 matches file / checked", "%d / %d" % (products_figures["md5_ok"], products_figures["checked"])),
        ("products: missing, not made, wrong attempt", "%d, %d, %d" % (
            products_figures["missing_file"], products_figures["not_made"], products_figures["wrong_attempt"])),
        ("unexpected exits (worker, scheduler)", "%d, %d" % (report["unexpected_exits"]["worker"],
                                                             report["unexpected_exits"]["scheduler"])),
        ("workers that could not start during an outage", report["unexpected_exits"]["start_refused_in_outage"]),
        ("outcome", "OK" if not report["problems"] else "FAILED:\n" + "\n".join(report["problems"])),
    ]
    return tabulate(rows, headers=("chaos run", "figure"))
