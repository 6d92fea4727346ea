"""The task tree: every task of a job under its parent, with the counts per state of each node's subtree.

Two shapes. :func:`job_tree` reads a whole job (the scripts' ``display_job_tree.py``), filters it by depth
and state, and adds subtree counts computed in one pass. :func:`tree_page` is for the web console at 10^5-10^6
tasks: it reads one node's children a page at a time through ``ix_eas_tasks_parent``, takes the root's
counts from ``ix_eas_tasks_job`` and descends only into the control tasks it shows; subtree counts of
finished nodes never change, so they are kept in a small in-process cache (unfinished ones for 5 s).
"""

from __future__ import annotations

import collections
import json
import threading
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from tabulate import tabulate

from eas_controller import states
from eas_controller.database.engine import chunks
from eas_controller.database.schema import attempts, tasks
from eas_controller.views.jobs import depth_first, job_state_counts, of_selected_jobs, task_metadata
from eas_controller.views.output import short

#: The seed's ``--status`` values and the task states each one selects (``stalled``: tasks with a lost attempt).
STATUS_FILTERS = {
    "any": None,
    "waiting": (states.WAITING, states.READY, states.HELD),
    "queued": (states.QUEUED,),
    "running": (states.RUNNING,),
    "stalled": None,
    "done": (states.DONE,),
    "failed": (states.FAILED,),
    "cancelled": (states.CANCELLED,),
    "held": (states.HELD,),
}

TREE_COLUMNS = ["task_id", "parent_id", "job_id", "job_name", "task_name", "task_type", "state", "attempts", "metadata",
                "chain_path", "depth", "inherited", "error", "subtree_counts"]


def job_tree(connection: Connection, job_name: str | None = None, job_id: int | None = None,
             max_depth: int | None = None, running_only: bool = False, status: str = "any") -> list[dict]:
    """Every task of the selected jobs (all jobs by default), parents before children.

    Each row has the JSON contract's fields: task_id, parent_id, job_name, task_name, task_type, state,
    attempts, metadata; plus job_id, chain_path, depth, inherited (loop values), error and subtree_counts
    (tasks per state in the node's subtree, itself included). ``max_depth`` (0 = the roots only),
    ``running_only`` and ``status`` select rows after the counts are made, so counts cover hidden tasks too.
    """
    query = sa.select(
        tasks.c.id, tasks.c.parent_id, tasks.c.job_id, tasks.c.job_name, tasks.c.name, tasks.c.task_type, tasks.c.state,
        tasks.c.attempt_count, tasks.c.chain_path, tasks.c.metadata, tasks.c.error_text, tasks.c.is_control,
    ).order_by(tasks.c.id)
    query = of_selected_jobs(connection, query, job_name, job_id)
    rows = connection.execute(query).all()
    result = [dict(task_id=row.id, parent_id=row.parent_id, job_id=row.job_id, job_name=row.job_name,
                   task_name=row.name, task_type=row.task_type, state=row.state, attempts=row.attempt_count,
                   chain_path=row.chain_path, inherited=json.loads(row.metadata), error=row.error_text,
                   is_control=bool(row.is_control)) for row in rows]
    ordered = depth_first(result)
    by_id = {row["task_id"]: row for row in ordered}
    for row in ordered:
        parent = by_id.get(row["parent_id"])
        row["depth"] = parent["depth"] + 1 if parent is not None else 0
        row["subtree_counts"] = {row["state"]: 1}
    for row in reversed(ordered):  # children come after their parent: add each subtree into its parent's
        parent = by_id.get(row["parent_id"])
        if parent is not None:
            for state, count in row["subtree_counts"].items():
                parent["subtree_counts"][state] = parent["subtree_counts"].get(state, 0) + count
    wanted = STATUS_FILTERS[status]
    stalled = _tasks_with_stalled_attempts(connection, [row["task_id"] for row in ordered]) if status == "stalled" else set()
    selected = [row for row in ordered
                if (max_depth is None or row["depth"] <= max_depth)
                and (not running_only or row["state"] == states.RUNNING)
                and (wanted is None or row["state"] in wanted)
                and (status != "stalled" or row["task_id"] in stalled)]
    metadata = task_metadata(connection, [row["task_id"] for row in selected])
    for row in selected:
        row["metadata"] = metadata.get(row["task_id"], {})
        row.pop("is_control")
    return selected


def _tasks_with_stalled_attempts(connection: Connection, task_ids: list[int]) -> set[int]:
    found: set[int] = set()
    for chunk in chunks(task_ids):
        found.update(connection.execute(sa.select(attempts.c.task_id).where(
            attempts.c.task_id.in_(chunk), attempts.c.state == states.A_STALLED).distinct()).scalars())
    return found


def render_counts(counts: dict[str, int]) -> str:
    """E.g. ``done 3, failed 1`` in the order of :data:`states.TASK_STATES`."""
    return ", ".join("%s %d" % (state, counts[state]) for state in states.TASK_STATES if counts.get(state))


def render_tree(rows: list[dict]) -> str:
    """The job tree as an indented table for people."""
    table = []
    for row in rows:
        label = row["task_type"] + (" %s" % row["task_name"] if row["task_name"] else "")
        inherited = ", ".join("%s=%s" % (k, short(v)) for k, v in row["inherited"].items() if not k.endswith("_index"))
        subtree = render_counts(row["subtree_counts"]) if sum(row["subtree_counts"].values()) > 1 else ""
        table.append([row["task_id"], "  " * row["depth"] + label, row["state"], row["attempts"], subtree,
                      short(row["metadata"]) if row["metadata"] else "", inherited, (row["error"] or "")[:80]])
    return tabulate(table, headers=["id", "task", "state", "attempts", "subtree", "output metadata", "loop values",
                                    "error"])


# -- the paged tree of the web console ---------------------------------------------------------------------

_NODE_COLUMNS = (tasks.c.id, tasks.c.parent_id, tasks.c.job_id, tasks.c.name, tasks.c.task_type, tasks.c.state,
                 tasks.c.is_control, tasks.c.attempt_count, tasks.c.metadata, tasks.c.error_text)


class _CountsCache:
    """Subtree counts already computed: those of finished control tasks are kept (they cannot change until a
    rerun), those of unfinished ones for ``fresh_s`` seconds, so a page refreshed or opened by several
    people does not count a large loop again each time. At most ``max_entries`` are kept."""

    def __init__(self, max_entries: int = 5000, fresh_s: float = 5.0) -> None:
        self.entries: collections.OrderedDict[int, tuple[float | None, dict]] = collections.OrderedDict()
        self.max_entries = max_entries
        self.fresh_s = fresh_s
        self.lock = threading.Lock()

    def get(self, task_id: int) -> dict | None:
        with self.lock:
            entry = self.entries.get(task_id)
            if entry is None or (entry[0] is not None and entry[0] < time.monotonic()):
                return None
            return entry[1]

    def put(self, task_id: int, counts: dict, final: bool) -> None:
        with self.lock:
            self.entries[task_id] = (None if final else time.monotonic() + self.fresh_s, counts)
            self.entries.move_to_end(task_id)
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)


_cache = _CountsCache()


def clear_counts_cache() -> None:
    """Forget the cached subtree counts (benchmarks measure the first view of a tree)."""
    with _cache.lock:
        _cache.entries.clear()


def job_roots(connection: Connection, job_id: int) -> list:
    """The job's top tasks. Asked as ``parent_id IS NULL`` alone, so that the parent index answers (one top
    task per job) rather than a scan of the job's tasks; the job is picked out of those few rows."""
    ids = [row.id for row in connection.execute(sa.select(tasks.c.id, tasks.c.job_id).where(tasks.c.parent_id.is_(None)))
           if row.job_id == job_id]
    if not ids:
        return []
    return connection.execute(sa.select(*_NODE_COLUMNS).where(tasks.c.id.in_(sorted(ids)[:100])).order_by(tasks.c.id)).all()


def subtree_counts(connection: Connection, node, root_of_job: bool = False) -> dict[str, int]:
    """Tasks per state below ``node`` and itself: a job's root from the job index, other control tasks
    level by level (worker tasks counted in SQL, only control tasks descended into)."""
    if not node.is_control:
        return {node.state: 1}
    if root_of_job:
        return job_state_counts(connection, node.job_id)
    cached = _cache.get(node.id)
    if cached is not None:
        return dict(cached)
    counts: dict[str, int] = {node.state: 1}
    level = [node.id]
    while level:
        following = []
        for chunk in chunks(level):
            control_children = 0
            for state, is_control, count in connection.execute(
                    sa.select(tasks.c.state, tasks.c.is_control, sa.func.count()).where(tasks.c.parent_id.in_(chunk))
                    .group_by(tasks.c.state, tasks.c.is_control)):
                counts[state] = counts.get(state, 0) + count
                control_children += count if is_control else 0
            if control_children:  # descend only where there are control tasks (a loop of plain tasks: no)
                following.extend(connection.execute(sa.select(tasks.c.id).where(
                    tasks.c.parent_id.in_(chunk), tasks.c.is_control.is_(True))).scalars())
        level = following
    _cache.put(node.id, counts, final=node.state in states.TASK_FINAL_STATES)
    return dict(counts)


def node_row(connection: Connection, node, root_of_job: bool = False) -> dict:
    return dict(task_id=node.id, parent_id=node.parent_id, job_id=node.job_id, task_name=node.name,
                task_type=node.task_type, state=node.state, is_control=bool(node.is_control),
                attempts=node.attempt_count, error=node.error_text,
                loop_values={k: v for k, v in json.loads(node.metadata).items() if not k.endswith("_index")},
                subtree_counts=subtree_counts(connection, node, root_of_job))


def children_page(connection: Connection, parent_id: int, after_id: int = 0, limit: int = 100) -> tuple[list, int | None]:
    """Up to ``limit`` children of a task with ids above ``after_id``; and the id to continue after, if more."""
    rows = connection.execute(sa.select(*_NODE_COLUMNS).where(tasks.c.parent_id == parent_id, tasks.c.id > after_id)
                              .order_by(tasks.c.id).limit(limit + 1)).all()
    more = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], more


def tree_page(connection: Connection, job_id: int, node_id: int | None = None, depth: int = 1,
              after_id: int = 0, limit: int = 100) -> dict:
    """What the console's tree page shows: the chosen node (default: the job's root), its ancestors for a
    breadcrumb trail, and ``depth`` levels below it, each level a page of at most ``limit`` children."""
    roots = None
    if node_id is None:
        roots = job_roots(connection, job_id)
        if not roots:
            return dict(node=None, ancestors=[], children=[], more_after=None)
        node = roots[0]
    else:
        node = connection.execute(sa.select(*_NODE_COLUMNS).where(tasks.c.id == node_id, tasks.c.job_id == job_id)).first()
        if node is None:
            raise LookupError("job %d has no task %d" % (job_id, node_id))
    ancestors = []
    parent_id = node.parent_id
    while parent_id is not None and len(ancestors) < 50:
        parent = connection.execute(sa.select(tasks.c.id, tasks.c.parent_id, tasks.c.task_type, tasks.c.name)
                                    .where(tasks.c.id == parent_id)).first()
        if parent is None:
            break
        ancestors.insert(0, dict(task_id=parent.id, task_type=parent.task_type, task_name=parent.name))
        parent_id = parent.parent_id

    def level(parent, remaining: int, after: int = 0) -> tuple[list, int | None]:
        if remaining <= 0 or not parent.is_control:
            return [], None
        rows, more = children_page(connection, parent.id, after, limit)
        result = []
        for child in rows:
            entry = node_row(connection, child)
            entry["children"], entry["more_after"] = level(child, remaining - 1)
            result.append(entry)
        return result, more

    only_root = node.parent_id is None and len(roots if roots is not None else job_roots(connection, job_id)) == 1
    top = node_row(connection, node, root_of_job=only_root)
    top["children"], top["more_after"] = level(node, max(1, depth), after_id)
    return dict(node=top, ancestors=ancestors)
