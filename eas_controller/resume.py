"""Resuming a job (``submit.py --resume``): which tasks of a resubmitted chain can take an earlier run's
results over instead of running, and why the others run.

The same task across submissions is the worker task with the same chain path (its position in the file,
with its loop indices and values) in a job of the same name. It is reused when its latest ``done`` run
had the same task type, task-type version, job name, working directory and evaluated description (less
``comment`` and ``priority``), and every file it reads would have the md5 that run read. Decisions go in
dependency order: a task whose upstream task re-runs re-runs too, since what it would read is not made
yet. See docs/resume.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os

from sqlalchemy.engine import Connection

from eas_controller import uris
from eas_controller.chains import ChainError, Node, Plan, evaluate_late_fields
from eas_controller.store import metadata as metadata_store
from eas_controller.store import reuse as reuse_store
from eas_controller.store.metadata import output_of
from eas_controller.store.plans import compared_fields, fingerprint, type_versions

NEW = "new"
REUSED = "reused"
UPSTREAM = "upstream re-runs"
STORED_PATH_LENGTH = 1024  # eas_tasks.chain_path


@dataclasses.dataclass
class Decision:
    """What a resumed submission does with one worker task."""

    node: Node
    reason: str  # reused | new | changed <field> | changed input <semantic type> | upstream re-runs ...
    earlier: reuse_store.Earlier | None = None

    @property
    def reused(self) -> bool:
        return self.reason == REUSED

    def as_json(self) -> dict:
        earlier = self.earlier
        return dict(
            index=self.node.index, chain_path=self.node.chain_path, task_name=self.node.name,
            task_type=self.node.task_type, action="reuse" if self.reused else "run", reason=self.reason,
            earlier_task_id=earlier.task_id if earlier else None,
            reused_task_id=earlier.attempt_task_id if earlier and self.reused else None,
            reused_attempt_id=earlier.attempt_id if earlier and self.reused else None,
            reused_attempt_number=earlier.attempt_number if earlier and self.reused else None,
        )


def stored_path(node: Node) -> str:
    """A node's chain path as the tasks table holds it (cut at its column's length)."""
    return node.chain_path[:STORED_PATH_LENGTH]


def check_earlier_job(connection: Connection, plan: Plan) -> None:
    """:class:`ChainError` (one line) when no job of the plan's name is in the database."""
    names = reuse_store.job_names(connection)
    if plan.job_name in names:
        return
    close = difflib.get_close_matches(plan.job_name, names, n=1)
    hint = "; did you mean %r (--job-name)?" % close[0] if close else (
        "; submit it once without --resume first" if names else "; the database has no jobs yet")
    raise ChainError("%s: --resume: no earlier job named %r in this database%s" % (plan.source, plan.job_name, hint))


def outside_inputs(plan: Plan) -> list[str]:
    """The URIs the plan's tasks read that no task of the plan makes (data from outside, or made by an earlier
    job): what :func:`source_identities` looks up before a resume decides."""
    made = {path for node in plan.worker_tasks for path in node.outputs.values()}
    return sorted({path for node in plan.worker_tasks for path in node.inputs.values()
                   if uris.is_uri(path) and path not in made})


def source_identities(paths: list[str], s3_endpoint_url: str | None = None) -> dict[str, str]:
    """{URI: what identifies its content now} (see ``Transfer.source_identity``); "" for one that cannot be
    looked up from here, which then counts as changed."""
    from eas_controller.worker.transfer import Transfer, TransferError

    transfer = Transfer(s3_endpoint_url=s3_endpoint_url)
    result = {}
    for path in paths:
        try:
            result[path] = transfer.source_identity(path)
        except TransferError:
            result[path] = ""
    return result


def decide(connection: Connection, plan: Plan, identities: dict[str, str] | None = None) -> list[Decision]:
    """One :class:`Decision` per worker task of the plan, in plan order. ``identities``: those of the plan's
    :func:`outside_inputs`, looked up beforehand (outside the transaction)."""
    identities = identities or {}
    leaves = plan.worker_tasks
    earlier = reuse_store.earlier_tasks(connection, plan.job_name, [stored_path(node) for node in leaves])
    earlier_ids = [found.task_id for found in earlier.values()]
    read = reuse_store.inputs_read(connection, earlier_ids)
    fetched = metadata_store.inputs_fetched(connection, [found.attempt_id for found in earlier.values()
                                                         if found.attempt_id is not None])
    made = reuse_store.outputs_made(connection, earlier_ids)
    database = reuse_store.database_inputs(connection, {path for node in leaves for path, _s in node.unresolved_inputs})
    versions = type_versions(connection)
    requested = _requested_metadata(connection, leaves, earlier)
    decisions: dict[int, Decision] = {}

    def reason_for(node: Node) -> Decision:
        found = earlier.get(stored_path(node))
        if found is None or found.attempt_id is None:
            return Decision(node, NEW)
        evaluated = _evaluated(node, requested.get(node.index))
        if node.needs_evaluation and evaluated is None:  # a source has no earlier run: it runs now
            return Decision(node, UPSTREAM, found)
        if isinstance(evaluated, str):
            return Decision(node, "changed " + evaluated, found)
        changed = _changed_field(node, found, versions.get(node.task_type, "1"), evaluated)
        if changed:
            return Decision(node, "changed " + changed, found)
        if any(producer.is_control or not decisions[producer.index].reused for producer in _upstream(node)):
            return Decision(node, UPSTREAM, found)
        producers = {path: producer for producer, path, _semantic in node.file_dependencies}
        for semantic, path in sorted(node.inputs.items()):
            if path in producers:
                now = made.get(earlier[stored_path(producers[path])].task_id, {}).get(path, {}).get("md5")
            elif path not in database and path in identities:  # data from outside: what the source holds now
                then = fetched.get(found.attempt_id, {}).get(path)
                if not identities[path] or identities[path] != then:
                    return Decision(node, "changed input " + semantic, found)
                continue
            else:
                now = database.get(path)
            if now is None or now != read.get(found.task_id, {}).get(path):
                return Decision(node, "changed input " + semantic, found)
        outputs = made.get(found.task_id, {})
        for semantic, path in sorted(node.outputs.items()):
            version = outputs.get(path)
            if version is None or not _file_is_there(version):
                return Decision(node, "missing output " + semantic, found)
        if node.needs_evaluation and evaluated is not None:  # a reused task keeps its fields as they were run
            node.description, node.needs_evaluation = evaluated, False
        return Decision(node, REUSED, found)

    for node in _dependency_order(leaves):
        decisions[node.index] = reason_for(node)
    return [decisions[node.index] for node in leaves]


def _upstream(node: Node) -> list[Node]:
    """The tasks of the plan ``node`` waits for: producers of the files it reads, its metadata sources."""
    return [producer for producer, _path, _semantic in node.file_dependencies] + list(node.metadata_from)


def _dependency_order(leaves: list[Node]) -> list[Node]:
    """The worker tasks, each after the worker tasks it waits for (iterative: chains may be long; the plan
    has no cycles, expansion refused them)."""
    order, seen = [], set()
    for start in leaves:
        stack = [(start, False)]
        while stack:
            node, finished = stack.pop()
            if finished:
                order.append(node)
                continue
            if node.index in seen:
                continue
            seen.add(node.index)
            stack.append((node, True))
            stack.extend((up, False) for up in _upstream(node) if not up.is_control and up.index not in seen)
    return order


def _evaluated(node: Node, requested: dict | None) -> dict | str | None:
    """A task's fields evaluated from its sources' earlier output metadata (None: they need none, or a
    source has no earlier run), or the reason they cannot be (a str)."""
    if not node.needs_evaluation or requested is None:
        return None
    try:
        return evaluate_late_fields(node.description, node.metadata, requested, node.chain_path)
    except ChainError:
        return "fields evaluated from requested metadata"


def _changed_field(node: Node, found: reuse_store.Earlier, version: str, evaluated: dict | None) -> str | None:
    """The name of the first of the task's own fields that differs from its earlier run, or None."""
    description = node.description if evaluated is None else evaluated
    if found.fingerprint is not None and found.fingerprint == fingerprint(node.task_type, version, description):
        return None
    if node.task_type != found.task_type:
        return "task"
    if version != found.type_version:
        return "task-type version"
    if node.job_name != found.job_name:
        return "job_name"
    if node.working_directory != found.working_directory:
        return "working_directory"
    new, old = compared_fields(description), compared_fields(found.description)
    for key in sorted(set(new) | set(old)):
        if key not in new or key not in old or _canonical(new[key]) != _canonical(old[key]):
            return key
    return None


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _requested_metadata(connection: Connection, leaves: list[Node], earlier: dict) -> dict[int, dict]:
    """For tasks whose fields wait for requested metadata: what their sources' earlier runs wrote."""
    wanted: dict[int, dict[str, int]] = {}
    for node in leaves:
        if node.needs_evaluation:
            sources = {source.name: earlier.get(stored_path(source)) for source in node.metadata_from}
            if all(found is not None for found in sources.values()):
                wanted[node.index] = {name: found.task_id for name, found in sources.items()}
    values = output_of(connection, {task_id for sources in wanted.values() for task_id in sources.values()})
    return {index: {name: values[task_id] for name, task_id in sources.items()} for index, sources in wanted.items()}


def _file_is_there(version: dict) -> bool:
    try:
        return os.path.getsize(version["path"]) == version["size"]
    except OSError:
        return False


def reuse_map(decisions: list[Decision]) -> dict[int, reuse_store.Earlier]:
    """{node index: earlier run} of the reused tasks, for :func:`eas_controller.store.plans.write_plan`."""
    return {decision.node.index: decision.earlier for decision in decisions if decision.reused}


def take_over(connection: Connection, decisions: list[Decision], ids: dict[int, int]) -> int:
    """Finish the reused tasks just written (``ids``: node index -> task id); returns how many."""
    pairs = [(ids[decision.node.index], decision.earlier) for decision in decisions if decision.reused]
    moved = reuse_store.take_over(connection, pairs)
    if moved.refused:
        raise RuntimeError("reused tasks were not ready when written: %s" % moved.refused)
    return len(moved.moved)
