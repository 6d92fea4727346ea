"""Expansion: task lists become :class:`Node` objects, loops are unrolled, dependencies inferred.

Expressions are evaluated with the metadata each task inherits; dependencies come from file names
(``inputs`` read what ``outputs`` of another task write) and from ``requires_metadata_from``. A control
task whose children cannot be known yet is left for the scheduler.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import posixpath
from typing import Any, Iterable, Iterator

from eas_controller import expressions, uris
from eas_controller.concurrency import FIELD as LIMIT_FIELD
from eas_controller.concurrency import LimitError, check_key, evaluate_key, parse_limit
from eas_controller.chains.loops import loop_values
from eas_controller.chains.model import (
    CHAIN,
    RANDOM_SEED_FIELD,
    CONDITIONAL,
    DO_WHILE,
    EARLY_FIELDS,
    FOR_LOOP,
    LATE_FIELDS,
    LOOP_FORMS,
    ChainError,
    Context,
    Node,
    json_type,
)
from eas_controller.chains.paths import check_length, check_resources, file_or_uri, normalised_directory
from eas_controller.expressions import ExpressionError
from eas_controller.registry import CONTROL_TYPES


class Expander:
    """Walks task lists and creates :class:`Node` objects; one instance per submission or run-time expansion."""

    def __init__(self, known_types: Iterable[str], source: str):
        self.limits = registry_limits(known_types)
        self.known_types = set(known_types) | set(CONTROL_TYPES)
        self.source = source
        self.nodes: list[Node] = []
        self.producers: dict[str, Node] = {}
        self.loop_producers: dict[str, Node] = {}  # file -> outermost do-while (in this plan) whose body makes it

    # -- helpers -------------------------------------------------------------------------------
    def where(self, path: str, context: Context | None = None) -> str:
        text = "%s: %s" % (self.source, path or "<chain>")
        loop_values_ = {k: v for k, v in (context.metadata.items() if context else ()) if not k.endswith("_index")}
        if loop_values_:
            text += " (with %s)" % ", ".join("%s=%s" % (k, _short(v)) for k, v in sorted(loop_values_.items()))
        return text

    def evaluate(self, value: Any, context: Context, where: str, field: str, path: str = "") -> Any:
        """Evaluate one field; ``path`` (the task's chain path) scopes its ``random`` draws."""
        try:
            return expressions.evaluate_value(value, context.metadata, context.requested_metadata,
                                              random_streams(context, "%s#%s" % (path, field)))
        except ExpressionError as error:
            if error.field is None:
                raise ChainError("%s: field '%s': %s" % (where, field, error)) from None
            raise ChainError("%s: field '%s.%s': %s" % (where, field, error.field, str(error).split(": ", 1)[1])
                             ) from None

    def check_type(self, task_type: Any, where: str) -> str:
        if not isinstance(task_type, str) or not task_type:
            raise ChainError("%s: field 'task' must be a task type name, not %r" % (where, task_type))
        if task_type not in self.known_types:
            close = difflib.get_close_matches(task_type, sorted(self.known_types), n=3, cutoff=0.5)
            hint = "; did you mean %s?" % " or ".join(repr(c) for c in close) if close else ""
            raise ChainError("%s: unknown task type %r%s" % (where, task_type, hint))
        return task_type

    # -- walking ---------------------------------------------------------------------------------
    def expand_list(self, task_list: list, context: Context, path: str, field: str = "task_list") -> list[Node]:
        list_path = "%s.%s" % (path, field) if path else field
        siblings: dict[str, Node] = {}
        created = []
        for position, item in enumerate(task_list):
            node = self.expand_task(item, context, "%s[%d]" % (list_path, position), siblings)
            created.append(node)
            if node.name is not None:
                siblings[node.name] = node
        return created

    def expand_task(self, item: dict, context: Context, path: str, siblings: dict[str, Node]) -> Node:
        where = self.where(path, context)
        task_type = self.check_type(self.evaluate(item["task"], context, where, "task", path), where)
        name = self.evaluate(item.get("name"), context, where, "name", path)
        if name is not None and not isinstance(name, str):
            name = str(name)
        if name is not None and name in siblings:
            raise ChainError("%s: duplicate task name %r among its siblings (%s has it too)"
                             % (where, name, siblings[name].chain_path))
        job_name = self.evaluate(item.get("job_name", context.job_name), context, where, "job_name", path)
        working_directory = self.evaluate(item.get("working_directory", context.working_directory), context, where,
                                          "working_directory", path)
        if not isinstance(working_directory, str):
            raise ChainError("%s: field 'working_directory' must be a string, not %r" % (where, working_directory))
        working_directory = normalised_directory(working_directory, where)
        for field, value in (("name", name), ("job_name", job_name), ("working_directory", working_directory)):
            check_length(value, field, where)
        priority = self.evaluate(item.get("priority", context.priority), context, where, "priority", path)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ChainError("%s: field 'priority' must be a whole number, not %r" % (where, priority))
        if not -2**31 <= priority < 2**31:
            raise ChainError("%s: field 'priority' must be between %d and %d, not %d" % (where, -2**31, 2**31 - 1,
                                                                                       priority))

        metadata_from = self.metadata_sources(item, context, siblings, where, path)
        node = Node(
            index=len(self.nodes), chain_path=path, task_type=task_type, is_control=task_type in CONTROL_TYPES,
            name=name, job_name=str(job_name), working_directory=working_directory, description={},
            metadata=dict(context.metadata), priority=priority, parent=context.parent,
            parent_task_id=context.parent_task_id, metadata_from=metadata_from,
        )
        self.nodes.append(node)
        if node.is_control:
            child_context = dataclasses.replace(
                context, job_name=node.job_name, working_directory=working_directory, priority=priority, parent=node,
                parent_task_id=None,
            )
            self.expand_control(node, item, child_context, path, where)
        else:
            self.prepare_leaf(node, item, context, where)
        return node

    def metadata_sources(self, item: dict, context: Context, siblings: dict[str, Node], where: str,
                         path: str = "") -> list[Node]:
        names = item.get("requires_metadata_from", [])
        if isinstance(names, str):
            names = [names]
        sources = []
        for position, name in enumerate(names):
            if expressions.is_expression(name):  # names are evaluated like any value
                name = self.evaluate(name, context, where, "requires_metadata_from[%d]" % position, path)
                if not isinstance(name, str):
                    raise ChainError("%s: field 'requires_metadata_from[%d]' must give a task name (a string), not %s"
                                     % (where, position, json_type(name)))
            if name not in siblings:  # a computed sibling name that did not come out as expected
                raise ChainError(
                    "%s: field 'requires_metadata_from' names %r, which is not an earlier sibling (earlier "
                    "siblings: %s)" % (where, name, ", ".join(map(repr, sorted(siblings))) or "none")
                )
            sources.append(siblings[name])
        return sources

    def prepare_leaf(self, node: Node, item: dict, context: Context, where: str) -> None:
        """Evaluate a worker task's fields now, or (when they read its own sources' metadata) at promotion."""
        late = bool(node.metadata_from) and any(
            expressions.uses_requested_metadata(value) for key, value in item.items() if key not in EARLY_FIELDS
        )
        if late:
            description = dict(item)
            for field in EARLY_FIELDS:
                if field in item:
                    description[field] = self.evaluate(item[field], context, where, field, node.chain_path)
            if context.random_seed is not None:  # read (and dropped) at promotion
                description[RANDOM_SEED_FIELD] = [context.random_seed, node.chain_path]
            node.needs_evaluation = True
        else:
            try:
                description = expressions.evaluate_fields(item, context.metadata, context.requested_metadata,
                                                          skip=LATE_FIELDS,
                                                          random_streams=random_streams(context, node.chain_path))
            except ExpressionError as error:
                raise ChainError("%s: %s" % (where, error)) from None
        description["task"] = node.task_type
        if node.name is not None:
            description["name"] = node.name
        node.description = description
        for field in ("inputs", "outputs"):
            files = description.get(field, {}) or {}
            if not isinstance(files, dict):
                raise ChainError("%s: field '%s' must be an object {semantic type: file name}" % (where, field))
            resolved = {}
            for semantic, filename in files.items():
                check_length(semantic, "%s (semantic type)" % field, where)
                resolved[semantic] = file_or_uri(node.working_directory, filename, where, "%s.%s" % (field, semantic),
                                                 writing=field == "outputs")
                check_length(resolved[semantic], "%s.%s" % (field, semantic), where)
            setattr(node, field, resolved)
        if not node.needs_evaluation and "resources" in description:
            check_resources(description["resources"], where)
        for semantic, path in node.outputs.items():
            self.register_output(node, path, where, "outputs.%s" % semantic)
        self.apply_limit(node, item, context, where)

    def apply_limit(self, node: Node, item: dict, context: Context, where: str) -> None:
        """The task's concurrency limit: its own ``concurrency_limit`` field, else its type's; the key is
        evaluated now and stored with the task."""
        try:
            if LIMIT_FIELD in item:
                declared = parse_limit(item[LIMIT_FIELD])
                key = node.description[LIMIT_FIELD].get("key") if declared.key is not None else node.task_type
                if isinstance(key, bool) or not isinstance(key, (str, int, float)):
                    raise LimitError("field '%s.key' must give a string, not %r" % (LIMIT_FIELD, key))
                node.limit_key, node.limit_max = check_key(str(key)), declared.max
            elif node.task_type in self.limits:
                limit = self.limits[node.task_type]
                node.limit_key = evaluate_key(limit, node.task_type, context.metadata, node.description)
                node.limit_max = limit.max
        except LimitError as error:
            what = "" if LIMIT_FIELD in item else " (from the registry's task type %s)" % node.task_type
            raise ChainError("%s: %s%s" % (where, error, what)) from None

    def register_output(self, node: Node, path: str, where: str, field: str) -> None:
        other = self.producers.get(path)
        if other is not None and other is not node:
            raise ChainError(
                "%s: field '%s': file %r is also produced by %s; each file must have one producer"
                % (where, field, path, other.chain_path or "<chain>")
            )
        self.producers[path] = node

    def expand_control(self, node: Node, item: dict, context: Context, path: str, where: str) -> None:
        """Expand now what can be expanded now; leave the rest (deferred) for the scheduler."""
        node.description = dict(item)
        if context.random_seed is not None:
            node.description[RANDOM_SEED_FIELD] = context.random_seed  # for the passes expanded at run time
        if node.metadata_from:
            # Its fields may read its sources' metadata, and its children must not start before those
            # sources finish: the children are created when the scheduler starts it.
            self.record_deferred_outputs(node, item, context, where)
            return
        self.expand_children(node, context, path, where, pass_number=1)

    def expand_children(self, node: Node, context: Context, path: str, where: str, pass_number: int) -> None:
        item = node.description
        if node.task_type == CHAIN:
            node.children = self.expand_list(item["task_list"], context, path)
        elif node.task_type == FOR_LOOP:
            settings = self.evaluate({k: v for k, v in item.items() if k in LOOP_FORMS}, context, where, "loop", path)
            parameter = self.name_field(item, "parameter", context, where, path)
            values = loop_values(settings, where)
            node.description = dict(item, loop_values=values)
            for index, value in enumerate(values):
                metadata = dict(context.metadata, **{parameter: value, parameter + "_index": index})
                iteration = dataclasses.replace(context, metadata=metadata)
                node.children.extend(self.expand_list(item["task_list"], iteration,
                                                      "%s{%s_index=%d}" % (path, parameter, index)))
        elif node.task_type == CONDITIONAL:
            criterion = self.evaluate(item["criterion"], context, where, "criterion", path)
            node.description = dict(item, criterion_value=bool(criterion))
            field = "task_list" if criterion else "else_task_list"
            node.children = self.expand_list(item.get(field, []), context, path, field)
        elif node.task_type == DO_WHILE:
            iteration_name = self.name_field(item, "iteration_name", context, where, path)
            metadata = dict(context.metadata, **{iteration_name + "_index": pass_number})
            iteration = dataclasses.replace(context, metadata=metadata)
            node.children = self.expand_list(
                item["task_list"], iteration, "%s{%s_index=%d}" % (path, iteration_name, pass_number)
            )
            if node.index >= 0:
                # Readers outside the loop wait for the whole loop: a later pass may rewrite the file.
                for child in self.descendants(node):
                    for produced in child.outputs.values():
                        self.loop_producers.setdefault(produced, node)
                    for produced in child.deferred_outputs:
                        self.loop_producers.setdefault(produced, node)
        node.expanded = True

    def name_field(self, item: dict, field: str, context: Context, where: str, path: str) -> str:
        """A loop's ``parameter`` or ``iteration_name``: a name, or an expression that gives one."""
        name = self.evaluate(item[field], context, where, field, path)
        if not isinstance(name, str) or not name:
            raise ChainError("%s: field '%s' must give a name (a non-empty string), not %s"
                             % (where, field, json.dumps(name)))
        check_length(name, field, where)
        return name

    def descendants(self, node: Node) -> list[Node]:
        result = []
        for child in node.children:
            result.append(child)
            result.extend(self.descendants(child))
        return result

    def record_deferred_outputs(self, node: Node, item: dict, context: Context, where: str) -> None:
        """Files a deferred subtree will make, where their names can be worked out now, map to the control task,
        so that readers elsewhere wait for the whole subtree."""
        for path, semantic in _planned_outputs(item, context.metadata, context.requested_metadata,
                                               context.working_directory):
            node.deferred_outputs.append(path)
            self.register_output(node, path, where, "outputs.%s (inside this task)" % semantic)

    # -- dependencies ----------------------------------------------------------------------------
    def resolve_files(self) -> None:
        """Attach each input to its producer in this plan, or leave it for the database lookup."""
        for node in self.nodes:
            ancestors = None
            for semantic, path in node.inputs.items():
                producer = self.producers.get(path)
                if producer is None:
                    node.unresolved_inputs.append((path, semantic))
                    continue
                loop = self.loop_producers.get(path)
                if loop is not None:
                    ancestors = ancestors if ancestors is not None else node.ancestors()
                    if loop not in ancestors:
                        producer = loop  # made inside a do-while this task is not part of: wait for the loop
                if producer is node:
                    raise ChainError("%s: field 'inputs.%s': the task reads %r, which it produces itself"
                                     % (self.where(node.chain_path), semantic, path))
                node.file_dependencies.append((producer, path, semantic))

    def check_cycles(self) -> None:
        """Kahn's algorithm over the in-plan dependencies; a leftover node is on a cycle."""
        edges: dict[int, set[int]] = {node.index: set() for node in self.nodes}
        for node in self.nodes:
            for producer, _path, _semantic in node.file_dependencies:
                edges[node.index].add(producer.index)
            for source in node.metadata_from:
                edges[node.index].add(source.index)
            for child in node.children:
                edges[node.index].add(child.index)
        dependants: dict[int, list[int]] = {index: [] for index in edges}
        remaining = {index: len(required) for index, required in edges.items()}
        for index, required in edges.items():
            for other in required:
                dependants[other].append(index)
        ready = [index for index, count in remaining.items() if count == 0]
        while ready:
            index = ready.pop()
            for dependant in dependants[index]:
                remaining[dependant] -= 1
                if remaining[dependant] == 0:
                    ready.append(dependant)
        stuck = {index for index, count in remaining.items() if count > 0}
        if stuck:
            cycle = _find_cycle(edges, stuck)
            described = []
            for index in cycle:
                node = self.nodes[index]
                why = [path for producer, path, _s in node.file_dependencies if producer.index in stuck]
                described.append("%s%s" % (node.chain_path or "<chain>", " (reads %s)" % ", ".join(why) if why else ""))
            raise ChainError("%s: dependency cycle: these tasks wait for each other: %s"
                             % (self.source, " -> ".join(described)))


def registry_limits(known_types) -> dict:
    """{task type: its Limit} when ``known_types`` is the registry ({name: TaskType}); names alone carry none."""
    if not isinstance(known_types, dict):
        return {}
    return {name: kind.concurrency_limit for name, kind in known_types.items()
            if getattr(kind, "concurrency_limit", None) is not None}


def random_streams(context: Context, scope: str) -> expressions.RandomStreams | None:
    """The generators of ``random`` for one task (or one field of it): seeded by the chain's random_seed."""
    if context.random_seed is None:
        return None
    return expressions.RandomStreams(context.random_seed, scope)


def _find_cycle(edges: dict[int, set[int]], stuck: set[int]) -> list[int]:
    """One cycle among the stuck nodes (each waits for another stuck node), for the error message."""
    start = min(stuck)
    seen: dict[int, int] = {}
    order: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(order)
        order.append(node)
        node = min(other for other in edges[node] if other in stuck)
    return order[seen[node]:] + [node]


def _short(value: Any, width: int = 24) -> str:
    text = "%.6g" % value if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def _planned_outputs(item: dict, metadata: dict, requested: dict, working_directory: str) -> Iterator[tuple[str, str]]:
    """(relative path, semantic type) of the files the subtree below ``item`` will make, as far as they can be
    worked out now: loops are unrolled with their values, both branches of a conditional count, and a
    file whose name needs something only known at run time (its requested metadata, a pass number) is
    skipped."""
    for field in ("task_list", "else_task_list"):
        for task in item.get(field, []) or []:
            yield from _planned_task_outputs(task, metadata, requested, working_directory)


def _planned_task_outputs(task: dict, metadata: dict, requested: dict, working_directory: str):
    try:
        directory = expressions.evaluate_value(task.get("working_directory", working_directory), metadata, requested)
        task_type = expressions.evaluate_value(task.get("task"), metadata, requested)
    except ExpressionError:
        return
    if not isinstance(directory, str):
        return
    if task_type == FOR_LOOP:
        try:
            settings = expressions.evaluate_value({k: v for k, v in task.items() if k in LOOP_FORMS}, metadata,
                                                  requested)
            values = loop_values(settings, "")
        except (ExpressionError, ChainError):
            return
        for index, value in enumerate(values):
            inner = dict(metadata, **{task["parameter"]: value, task["parameter"] + "_index": index})
            yield from _planned_outputs(task, inner, requested, directory)
    elif task_type in CONTROL_TYPES:
        yield from _planned_outputs(task, metadata, requested, directory)
    elif isinstance(task.get("outputs"), dict):
        for semantic, filename in task["outputs"].items():
            try:
                filename = expressions.evaluate_value(filename, metadata, requested)
            except ExpressionError:
                continue
            if uris.is_uri(filename):
                yield filename, semantic
            elif isinstance(filename, str) and filename.strip():
                yield posixpath.normpath(posixpath.join(directory, filename)), semantic
