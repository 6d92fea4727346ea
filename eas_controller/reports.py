"""Read-only views over the tables, shared by the diagnostic scripts, ``run_local.py`` and the web console.

Each view returns plain rows (dicts); :func:`emit` prints them as a table, JSON or CSV so every
diagnostic script has the same ``--format`` behaviour.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from tabulate import tabulate

from eas_controller import states
from eas_controller.chains import Plan
from eas_controller.database.schema import attempts, control_progress, jobs, metadata_items, tasks

FORMATS = ("table", "json", "csv")


def emit(rows: list[dict], output_format: str, columns: Iterable[str] | None = None) -> str:
    """Render rows for printing; JSON keeps nested values, table and CSV flatten them."""
    if output_format == "json":
        return json.dumps(rows, indent=1, default=str)
    columns = list(columns or (rows[0].keys() if rows else []))

    def flat(value):
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"))
        return value

    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([flat(row.get(column)) for column in columns])
        return buffer.getvalue().rstrip("\n")
    if not rows:
        return "(nothing to show)"
    return tabulate([[flat(row.get(column)) for column in columns] for row in rows], headers=columns)


def resolve_job_ids(connection: Connection, job_name: str | None = None, job_id: int | None = None) -> list[int]:
    query = sa.select(jobs.c.id).order_by(jobs.c.id)
    if job_id is not None:
        query = query.where(jobs.c.id == job_id)
    if job_name is not None:
        query = query.where(jobs.c.name == job_name)
    return [row.id for row in connection.execute(query)]


def task_metadata(connection: Connection, task_ids: list[int]) -> dict[int, dict]:
    result: dict[int, dict] = {}
    for start in range(0, len(task_ids), 500):
        chunk = task_ids[start : start + 500]
        rows = connection.execute(sa.select(metadata_items.c.task_id, metadata_items.c.key, metadata_items.c.value)
                                  .where(metadata_items.c.task_id.in_(chunk), metadata_items.c.scope == "task"))
        for row in rows:
            result.setdefault(row.task_id, {})[row.key] = json.loads(row.value)
    return result


def job_tree(connection: Connection, job_name: str | None = None, job_id: int | None = None) -> list[dict]:
    """Every task of the selected jobs (all jobs by default), parents before children.

    Each row has the JSON contract's fields: task_id, parent_id, job_name, task_name, task_type, state,
    attempts, metadata; plus job_id, chain_path, depth, inherited (loop values) and error.
    """
    query = sa.select(
        tasks.c.id, tasks.c.parent_id, tasks.c.job_id, tasks.c.job_name, tasks.c.name, tasks.c.task_type, tasks.c.state,
        tasks.c.attempt_count, tasks.c.chain_path, tasks.c.metadata, tasks.c.error_text, tasks.c.is_control,
    ).order_by(tasks.c.id)
    if job_name is not None or job_id is not None:
        query = query.where(tasks.c.job_id.in_(resolve_job_ids(connection, job_name, job_id)))
    rows = connection.execute(query).all()
    metadata = task_metadata(connection, [row.id for row in rows])
    depth: dict[int, int] = {}
    result = []
    for row in rows:
        depth[row.id] = depth.get(row.parent_id, -1) + 1 if row.parent_id is not None else 0
        result.append(dict(
            task_id=row.id, parent_id=row.parent_id, job_id=row.job_id, job_name=row.job_name, task_name=row.name,
            task_type=row.task_type, state=row.state, attempts=row.attempt_count, metadata=metadata.get(row.id, {}),
            chain_path=row.chain_path, depth=depth[row.id], inherited=json.loads(row.metadata), error=row.error_text,
        ))
    return _depth_first(result)


def _depth_first(rows: list[dict]) -> list[dict]:
    children: dict = {}
    for row in rows:
        children.setdefault(row["parent_id"], []).append(row)
    ids = {row["task_id"] for row in rows}
    ordered: list[dict] = []
    stack = [row for row in reversed(rows) if row["parent_id"] is None or row["parent_id"] not in ids]
    while stack:
        row = stack.pop()
        ordered.append(row)
        stack.extend(reversed(children.get(row["task_id"], [])))
    return ordered


def render_tree(rows: list[dict]) -> str:
    """The job tree as an indented table for people."""
    table = []
    for row in rows:
        label = row["task_type"] + (" %s" % row["task_name"] if row["task_name"] else "")
        inherited = ", ".join("%s=%s" % (k, _short(v)) for k, v in row["inherited"].items() if not k.endswith("_index"))
        table.append([row["task_id"], "  " * row["depth"] + label, row["state"], row["attempts"],
                      _short(row["metadata"]) if row["metadata"] else "", inherited, (row["error"] or "")[:80]])
    return tabulate(table, headers=["id", "task", "state", "attempts", "output metadata", "loop values", "error"])


def _short(value, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if isinstance(value, float):
        text = "%.6g" % value
    return text if len(text) <= width else text[: width - 3] + "..."


def render_plan(plan: Plan) -> str:
    """A dry run's view: the expanded tree, what waits for what, and what expands later at run time.

    Tasks are numbered ``#n`` in creation order; ``after #a, #b`` lists what a task waits for (files it
    reads, metadata it requests). Control tasks show what they do and when their children appear.
    """
    counts: dict[str, int] = {}
    for node in plan.worker_tasks:
        counts[node.task_type] = counts.get(node.task_type, 0) + 1
    deferred = [node for node in plan.nodes if node.is_control and not node.expanded]
    lines = ["job %r from %s: %d tasks now (%d on workers: %s; %d control-flow)" % (
        plan.job_name, plan.source, len(plan.nodes), len(plan.worker_tasks),
        ", ".join("%d %s" % (n, t) for t, n in sorted(counts.items())) or "none",
        len(plan.nodes) - len(plan.worker_tasks))]
    if deferred:
        lines.append("%d control task(s) expand at run time; their tasks are not counted above" % len(deferred))
    lines.append("")
    depth: dict[int, int] = {}
    for node in plan.nodes:
        depth[node.index] = depth[node.parent.index] + 1 if node.parent is not None else 0
        label = node.task_type + (" %r" % node.name if node.name else "")
        notes = _control_notes(node) if node.is_control else []
        waits = sorted({producer.index for producer, _p, _s in node.file_dependencies}
                       | {source.index for source in node.metadata_from})
        if waits and not (node.is_control and not node.expanded):
            notes.append("after " + ", ".join("#%d" % index for index in waits))
        if node.unresolved_inputs:
            notes.append("reads earlier jobs' " + ", ".join(path for path, _s in node.unresolved_inputs))
        if node.outputs:
            notes.append("writes " + ", ".join(node.outputs.values()))
        if node.needs_evaluation:
            notes.append("fields evaluated when its requested metadata exists")
        if node.parent is None or node.job_name != node.parent.job_name:
            notes.append("job_name %s" % node.job_name)
        if node.parent is None or node.working_directory != node.parent.working_directory:
            notes.append("in %s/" % (node.working_directory or "."))
        inherited = ", ".join("%s=%s" % (k, _short(v, 20)) for k, v in node.metadata.items() if not k.endswith("_index"))
        lines.append("%s#%d %s%s%s" % ("  " * depth[node.index], node.index, label,
                                        " [%s]" % inherited if inherited else "",
                                        ("  -- " + "; ".join(notes)) if notes else ""))
    return "\n".join(lines)


def _control_notes(node) -> list[str]:
    description = node.description
    if not node.expanded:
        notes = ["EXPANDS AT RUN TIME once %s finished" % ", ".join(
            "#%d" % source.index for source in node.metadata_from)]
        if node.task_type == "execution_conditional":
            notes.append("if %s: task_list (%d), else: else_task_list (%d)" % (
                description.get("criterion"), len(description.get("task_list", [])),
                len(description.get("else_task_list", []))))
        elif node.task_type == "execution_for_loop":
            notes.append("%s over %s" % (description.get("parameter"), next(
                json.dumps(description[form]) for form in ("values", "linear_range", "log_range") if form in description)))
        elif node.task_type == "execution_do_while_loop":
            notes.append("repeats while %s" % description.get("repeat_criterion"))
        if node.deferred_outputs:
            notes.append("will write " + ", ".join(node.deferred_outputs))
        return notes
    if node.task_type == "execution_for_loop":
        values = description.get("loop_values", [])
        return ["%s over %d value(s)" % (description.get("parameter"), len(values))]
    if node.task_type == "execution_conditional":
        return ["%s is %s: runs %s" % (description.get("criterion"), description.get("criterion_value"),
                                       "task_list" if description.get("criterion_value") else "else_task_list")]
    if node.task_type == "execution_do_while_loop":
        return ["pass 1 shown; after each pass, %s decides on another (at run time, at most %s passes)" % (
            description.get("repeat_criterion"), description.get("max_iterations", 1000))]
    return []


def job_summary(connection: Connection, job_id: int) -> list[dict]:
    """Worker tasks of a job with their latest attempt: what ``run_local.py`` prints at the end."""
    latest = (sa.select(attempts.c.task_id, sa.func.max(attempts.c.id).label("attempt_id"))
              .join(tasks, tasks.c.id == attempts.c.task_id).where(tasks.c.job_id == job_id)
              .group_by(attempts.c.task_id).subquery())
    rows = connection.execute(
        sa.select(tasks.c.id, tasks.c.name, tasks.c.task_type, tasks.c.state, tasks.c.attempt_count,
                  tasks.c.metadata, tasks.c.error_text, attempts.c.wall_s, attempts.c.worker_name)
        .select_from(tasks.outerjoin(latest, latest.c.task_id == tasks.c.id)
                     .outerjoin(attempts, attempts.c.id == latest.c.attempt_id))
        .where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False)).order_by(tasks.c.id)
    ).all()
    metadata = task_metadata(connection, [row.id for row in rows])
    ids = connection.execute(sa.select(tasks.c.id, tasks.c.parent_id).where(tasks.c.job_id == job_id)).all()
    order = {row["task_id"]: position for position, row in enumerate(_depth_first(
        [dict(task_id=task_id, parent_id=parent_id) for task_id, parent_id in ids]))}
    rows = sorted(rows, key=lambda row: order.get(row.id, 0))  # in chain order, loop bodies where the loop is
    return [dict(task_id=row.id, task=row.task_type + (" " + row.name if row.name else ""), state=row.state,
                 attempts=row.attempt_count, wall_s=None if row.wall_s is None else round(row.wall_s, 3),
                 worker=row.worker_name, loop_values=", ".join("%s=%s" % (k, _short(v, 16)) for k, v in
                                                             json.loads(row.metadata).items() if not k.endswith("_index")),
                 output_metadata=_short(metadata.get(row.id, {}), 50) if metadata.get(row.id) else "",
                 error=(row.error_text or "")[:70]) for row in rows]


def job_state_counts(connection: Connection, job_id: int) -> dict[str, int]:
    rows = connection.execute(sa.select(tasks.c.state, sa.func.count()).where(tasks.c.job_id == job_id)
                              .group_by(tasks.c.state))
    return {state: count for state, count in rows}


def job_is_finished(connection: Connection, job_id: int) -> bool:
    """Nothing in the job can still move: no task is ready, queued or running (a running control task whose
    children can never finish does not count), and nothing waits on a task that can still finish."""
    active = connection.execute(sa.select(tasks.c.id).where(
        tasks.c.job_id == job_id,
        sa.or_(tasks.c.state.in_([states.READY, states.QUEUED]),
               sa.and_(tasks.c.state == states.RUNNING, tasks.c.is_control.is_(False)))).limit(1)).first()
    if active is not None:
        return False
    uncounted = connection.execute(  # children finished whose control task the scheduler has yet to count down
        sa.select(control_progress.c.id).join(tasks, tasks.c.id == control_progress.c.task_id)
        .where(tasks.c.job_id == job_id).limit(1)).first()
    return uncounted is None


def progress_summary(connection: Connection, job_name: str | None = None) -> list[dict]:
    """Per task type, how many tasks are in each state."""
    query = sa.select(tasks.c.task_type, tasks.c.state, sa.func.count().label("n")).group_by(tasks.c.task_type, tasks.c.state)
    if job_name is not None:
        query = query.where(tasks.c.job_id.in_(resolve_job_ids(connection, job_name)))
    counts: dict[str, dict] = {}
    for row in connection.execute(query):
        counts.setdefault(row.task_type, {state: 0 for state in states.TASK_STATES})[row.state] = row.n
    return [dict(task_type=name, **values, total=sum(values.values())) for name, values in sorted(counts.items())]
