"""Task chains: read, validate and expand a chain into the tasks and dependencies it stands for.

A chain is JSON: ``{"job_name", "working_directory", "task_list": [...]}``. Expansion walks the task list,
evaluates expressions with the metadata each task inherits, unrolls loops, and infers dependencies from
file names (``inputs`` read what ``outputs`` of another task write) and from ``requires_metadata_from``.
Control-flow tasks stay in the tree as parents of what they expanded into; when what they need is not
known yet (a conditional on a sibling's metadata, the next pass of a do-while), they are left for the
scheduler, which calls :func:`expand_control_task` with the metadata that has appeared by then.

Nothing here touches the database: the result is a :class:`Plan` that :mod:`eas_controller.submission`
writes in one transaction. Every error names the chain file and the task's path in it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import posixpath
from typing import Any, Iterable

from eas_controller import expressions
from eas_controller.expressions import ExpressionError
from eas_controller.registry import CONTROL_TYPES

CHAIN = "execution_chain"
FOR_LOOP = "execution_for_loop"
CONDITIONAL = "execution_conditional"
DO_WHILE = "execution_do_while_loop"

#: fields that are evaluated later, in their own context, never by their parent
LATE_FIELDS = ("task_list", "else_task_list", "repeat_criterion")
#: fields that must be known when the task is created (dependencies are inferred from them)
EARLY_FIELDS = ("task", "name", "inputs", "outputs", "job_name", "working_directory", "priority")
CHAIN_KEYS = {"job_name", "working_directory", "task_list", "priority"}
MAX_LOOP_VALUES = 1_000_000


class ChainError(ValueError):
    """A chain cannot be submitted or expanded; the message names the file, the task path and the field."""


@dataclasses.dataclass
class Node:
    """One task the plan will create: a worker task (leaf) or a control-flow task."""

    index: int
    chain_path: str
    task_type: str
    is_control: bool
    name: str | None
    job_name: str
    working_directory: str
    description: dict
    metadata: dict
    priority: int
    parent: "Node | None" = None
    parent_task_id: int | None = None  # parent that already exists in the database
    expanded: bool = False  # control tasks: children created in this plan
    needs_evaluation: bool = False  # leaf fields wait for requested metadata
    inputs: dict = dataclasses.field(default_factory=dict)  # semantic type -> relative path
    outputs: dict = dataclasses.field(default_factory=dict)
    children: list = dataclasses.field(default_factory=list)
    metadata_from: list = dataclasses.field(default_factory=list)  # sibling Nodes or database task ids
    file_dependencies: list = dataclasses.field(default_factory=list)  # (Node, relative_path, semantic)
    unresolved_inputs: list = dataclasses.field(default_factory=list)  # (relative_path, semantic) for the DB

    def ancestors(self) -> list["Node"]:
        result, node = [], self.parent
        while node is not None:
            result.append(node)
            node = node.parent
        return result


@dataclasses.dataclass
class Plan:
    """What a submission (or a run-time expansion) creates, parents before children."""

    job_name: str
    source: str
    nodes: list[Node]

    @property
    def worker_tasks(self) -> list[Node]:
        return [node for node in self.nodes if not node.is_control]


@dataclasses.dataclass
class Context:
    """What a task inherits from the tasks above it."""

    job_name: str
    working_directory: str
    metadata: dict
    requested_metadata: dict
    priority: int
    parent: Node | None
    parent_task_id: int | None
    deferred_ancestor: bool = False  # inside a subtree whose outputs are only known at run time


def read_chain_text(text: str, source: str) -> dict:
    """Parse JSON with an error that gives line and column."""
    try:
        chain = json.loads(text)
    except json.JSONDecodeError as error:
        raise ChainError(
            "%s: not valid JSON at line %d, column %d: %s" % (source, error.lineno, error.colno, error.msg)
        ) from None
    if not isinstance(chain, dict):
        raise ChainError("%s: a task chain must be a JSON object with a 'task_list', not %s" % (source, type(chain).__name__))
    return chain


def read_chain_file(path: str) -> tuple[dict, str]:
    """Read a chain from ``path`` (``-`` is standard input); returns (chain, source name for messages)."""
    import sys

    if path == "-":
        return read_chain_text(sys.stdin.read(), "<stdin>"), "<stdin>"
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as error:
        raise ChainError("%s: cannot read the task chain: %s" % (path, error.strerror)) from None
    return read_chain_text(text, path), path


def _loop_values(description: dict, where: str) -> list:
    forms = [key for key in ("values", "linear_range", "log_range") if key in description]
    if len(forms) != 1:
        raise ChainError("%s: execution_for_loop needs exactly one of 'values', 'linear_range', 'log_range'" % where)
    form = forms[0]
    spec = description[form]
    if form == "values":
        if not isinstance(spec, list) or not spec:
            raise ChainError("%s: field 'values' must be a non-empty list" % where)
        if len(spec) > MAX_LOOP_VALUES:
            raise ChainError("%s: field 'values' has more than %d entries" % (where, MAX_LOOP_VALUES))
        return list(spec)
    if not isinstance(spec, list) or len(spec) != 3:
        raise ChainError("%s: field '%s' must be [start, end, count]" % (where, form))
    start, end, count = spec
    for label, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ChainError("%s: field '%s': %s must be a number, not %r" % (where, form, label, value))
    if isinstance(count, bool) or not isinstance(count, (int, float)) or int(count) != count:
        raise ChainError("%s: field '%s': count must be a whole number, not %r" % (where, form, count))
    count = int(count)
    if count < 1:
        raise ChainError("%s: field '%s': count must be at least 1, not %d" % (where, form, count))
    if count > MAX_LOOP_VALUES:
        raise ChainError("%s: field '%s': count must be at most %d" % (where, form, MAX_LOOP_VALUES))
    if count == 1:
        return [start]
    if form == "linear_range":
        step = (end - start) / (count - 1)
        return [start + step * i for i in range(count - 1)] + [end]
    if start <= 0 or end <= 0:
        raise ChainError("%s: field 'log_range': start and end must be positive, not %r and %r" % (where, start, end))
    ratio = math.log(end / start) / (count - 1)
    return [start * math.exp(ratio * i) for i in range(count - 1)] + [end]


def _relative_path(working_directory: str, filename: Any, where: str, field: str) -> str:
    if not isinstance(filename, str) or not filename.strip():
        raise ChainError("%s: field '%s' must be a file name (a non-empty string), not %r" % (where, field, filename))
    path = posixpath.normpath(posixpath.join(working_directory or "", filename))
    if posixpath.isabs(filename) or path.startswith("..") or path in (".", ""):
        raise ChainError(
            "%s: field '%s': %r must stay inside the working directory (no absolute paths or '..')"
            % (where, field, filename)
        )
    return path


class Expander:
    """Walks task lists; one instance per submission or run-time expansion."""

    def __init__(self, known_types: Iterable[str], source: str):
        self.known_types = set(known_types) | set(CONTROL_TYPES)
        self.source = source
        self.nodes: list[Node] = []
        self.producers: dict[str, Node] = {}

    # -- helpers -------------------------------------------------------------------------------
    def where(self, path: str, context: Context | None = None) -> str:
        text = "%s: %s" % (self.source, path or "<chain>")
        loop_values = {k: v for k, v in (context.metadata.items() if context else ()) if not k.endswith("_index")}
        if loop_values:
            text += " (with %s)" % ", ".join("%s=%r" % item for item in sorted(loop_values.items()))
        return text

    def evaluate(self, value: Any, context: Context, where: str, field: str) -> Any:
        try:
            return expressions.evaluate_value(value, context.metadata, context.requested_metadata)
        except ExpressionError as error:
            raise ChainError("%s: field '%s': %s" % (where, field, error)) from None

    def check_type(self, task_type: Any, where: str) -> str:
        if not isinstance(task_type, str) or not task_type:
            raise ChainError("%s: field 'task' must be a task type name, not %r" % (where, task_type))
        if task_type not in self.known_types:
            close = difflib.get_close_matches(task_type, sorted(self.known_types), n=3)
            hint = "; did you mean %s?" % " or ".join(repr(c) for c in close) if close else ""
            raise ChainError("%s: unknown task type %r%s" % (where, task_type, hint))
        return task_type

    # -- walking ---------------------------------------------------------------------------------
    def expand_list(self, task_list: Any, context: Context, path: str, field: str = "task_list") -> list[Node]:
        list_path = "%s.%s" % (path, field) if path else field
        if not isinstance(task_list, list):
            raise ChainError("%s: field '%s' must be a list of tasks, not %s" % (self.where(path, context), field, type(task_list).__name__))
        siblings: dict[str, Node] = {}
        created = []
        for position, item in enumerate(task_list):
            item_path = "%s[%d]" % (list_path, position)
            node = self.expand_task(item, context, item_path, siblings)
            created.append(node)
            if node.name is not None:
                siblings[node.name] = node
        return created

    def expand_task(self, item: Any, context: Context, path: str, siblings: dict[str, Node]) -> Node:
        where = self.where(path, context)
        if not isinstance(item, dict):
            raise ChainError("%s: each task must be a JSON object, not %s" % (where, type(item).__name__))
        if "task" not in item:
            raise ChainError("%s: missing field 'task' (the task type)" % where)
        task_type = self.check_type(self.evaluate(item["task"], context, where, "task"), where)
        name = self.evaluate(item.get("name"), context, where, "name")
        if name is not None and not isinstance(name, str):
            name = str(name)
        if name is not None and name in siblings:
            raise ChainError("%s: duplicate task name %r among its siblings" % (where, name))
        job_name = self.evaluate(item.get("job_name", context.job_name), context, where, "job_name")
        working_directory = self.evaluate(item.get("working_directory", context.working_directory), context, where, "working_directory")
        if not isinstance(working_directory, str):
            raise ChainError("%s: field 'working_directory' must be a string" % where)
        priority = self.evaluate(item.get("priority", context.priority), context, where, "priority")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ChainError("%s: field 'priority' must be a whole number, not %r" % (where, priority))

        metadata_from = self.metadata_sources(item, siblings, where)
        node = Node(
            index=len(self.nodes),
            chain_path=path,
            task_type=task_type,
            is_control=task_type in CONTROL_TYPES,
            name=name,
            job_name=str(job_name),
            working_directory=working_directory,
            description={},
            metadata=dict(context.metadata),
            priority=priority,
            parent=context.parent,
            parent_task_id=context.parent_task_id,
            metadata_from=metadata_from,
        )
        self.nodes.append(node)
        child_context = dataclasses.replace(
            context, job_name=node.job_name, working_directory=working_directory, priority=priority, parent=node,
            parent_task_id=None,
        )
        if node.is_control:
            self.expand_control(node, item, child_context, path, where)
        else:
            self.prepare_leaf(node, item, context, where)
        return node

    def metadata_sources(self, item: dict, siblings: dict[str, Node], where: str) -> list[Node]:
        names = item.get("requires_metadata_from", [])
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ChainError("%s: field 'requires_metadata_from' must be a list of sibling task names" % where)
        sources = []
        for name in names:
            if name not in siblings:
                raise ChainError(
                    "%s: field 'requires_metadata_from' names %r, which is not an earlier sibling "
                    "(known earlier siblings: %s)" % (where, name, sorted(siblings) or "none")
                )
            sources.append(siblings[name])
        return sources

    def prepare_leaf(self, node: Node, item: dict, context: Context, where: str) -> None:
        late = bool(node.metadata_from) and any(
            expressions.uses_requested_metadata(value) for key, value in item.items() if key not in EARLY_FIELDS
        )
        for field in ("inputs", "outputs"):
            if expressions.uses_requested_metadata(item.get(field)):
                raise ChainError(
                    "%s: field '%s' cannot use requested_metadata: file names must be known at submission "
                    "to infer dependencies" % (where, field)
                )
        if late:
            description = dict(item)
            for field in EARLY_FIELDS:
                if field in item:
                    description[field] = self.evaluate(item[field], context, where, field)
            node.needs_evaluation = True
        else:
            try:
                description = expressions.evaluate_fields(item, context.metadata, context.requested_metadata, skip=LATE_FIELDS)
            except ExpressionError as error:
                raise ChainError("%s: %s" % (where, error)) from None
        description["task"] = node.task_type
        node.description = description
        for field in ("inputs", "outputs"):
            files = description.get(field, {}) or {}
            if not isinstance(files, dict):
                raise ChainError("%s: field '%s' must be an object {semantic type: file name}" % (where, field))
            resolved = {}
            for semantic, filename in files.items():
                resolved[semantic] = _relative_path(node.working_directory, filename, where, "%s.%s" % (field, semantic))
            setattr(node, field, resolved)
        for semantic, path in node.outputs.items():
            self.register_output(node, path, where, "outputs.%s" % semantic)

    def register_output(self, node: Node, path: str, where: str, field: str) -> None:
        if path in self.producers and self.producers[path] is not node:
            other = self.producers[path]
            raise ChainError(
                "%s: field '%s': file %r is also produced by %s; each file must have one producer"
                % (where, field, path, self.where(other.chain_path))
            )
        self.producers[path] = node

    def expand_control(self, node: Node, item: dict, context: Context, path: str, where: str) -> None:
        """Expand now what can be expanded now; leave the rest (deferred) for the scheduler."""
        raw = {key: value for key, value in item.items()}
        node.description = raw
        for field in ("task_list", "else_task_list"):
            if field in item and not isinstance(item[field], list):
                raise ChainError("%s: field '%s' must be a list of tasks, not %s" % (where, field, type(item[field]).__name__))
        if node.task_type in (CHAIN, FOR_LOOP, DO_WHILE) and "task_list" not in item:
            raise ChainError("%s: %s needs a 'task_list'" % (where, node.task_type))
        if node.task_type == CONDITIONAL and "criterion" not in item:
            raise ChainError("%s: execution_conditional needs a 'criterion'" % where)
        if node.task_type == DO_WHILE:
            for field in ("iteration_name", "repeat_criterion"):
                if field not in item:
                    raise ChainError("%s: execution_do_while_loop needs '%s'" % (where, field))
            if not isinstance(item["iteration_name"], str):
                raise ChainError("%s: field 'iteration_name' must be a string" % where)
        deferred = bool(node.metadata_from) or context.deferred_ancestor
        if node.task_type == CONDITIONAL and not deferred:
            deferred = expressions.uses_requested_metadata(item["criterion"])
        if deferred:
            self.record_deferred_outputs(node, item, context, where)
            return
        self.expand_children(node, context, path, where, pass_number=1)

    def expand_children(self, node: Node, context: Context, path: str, where: str, pass_number: int) -> None:
        item = node.description
        if node.task_type == CHAIN:
            node.children = self.expand_list(item["task_list"], context, path)
        elif node.task_type == FOR_LOOP:
            settings = self.evaluate({k: v for k, v in item.items() if k not in LATE_FIELDS}, context, where, "loop")
            parameter = settings.get("parameter")
            if not isinstance(parameter, str) or not parameter:
                raise ChainError("%s: execution_for_loop needs a 'parameter' name" % where)
            for index, value in enumerate(_loop_values(settings, where)):
                metadata = dict(context.metadata, **{parameter: value, parameter + "_index": index})
                iteration = dataclasses.replace(context, metadata=metadata)
                node.children.extend(self.expand_list(item["task_list"], iteration, "%s{%s_index=%d}" % (path, parameter, index)))
        elif node.task_type == CONDITIONAL:
            criterion = self.evaluate(item["criterion"], context, where, "criterion")
            node.description = dict(item, criterion_value=bool(criterion))
            field = "task_list" if criterion else "else_task_list"
            node.children = self.expand_list(item.get(field, []), context, path, field)
        elif node.task_type == DO_WHILE:
            metadata = dict(context.metadata, **{item["iteration_name"] + "_index": pass_number})
            iteration = dataclasses.replace(context, metadata=metadata, deferred_ancestor=False)
            node.children = self.expand_list(
                item["task_list"], iteration, "%s{%s_index=%d}" % (path, item["iteration_name"], pass_number)
            )
            # Readers outside the loop must wait for the whole loop: a later pass may rewrite the file.
            for child in self.descendants(node):
                for produced in child.outputs.values():
                    self.producers.setdefault("@loop:" + produced, node)
        node.expanded = True

    def descendants(self, node: Node) -> list[Node]:
        result = []
        for child in node.children:
            result.append(child)
            result.extend(self.descendants(child))
        return result

    def record_deferred_outputs(self, node: Node, item: dict, context: Context, where: str) -> None:
        """Files a deferred subtree will produce, where their names are known now, map to the control task."""
        for task in _walk_raw(item):
            outputs = task.get("outputs")
            if not isinstance(outputs, dict):
                continue
            directory = task.get("working_directory", context.working_directory)
            for semantic, filename in outputs.items():
                try:
                    filename = expressions.evaluate_value(filename, context.metadata, context.requested_metadata)
                    directory = expressions.evaluate_value(directory, context.metadata, context.requested_metadata)
                except ExpressionError:
                    continue  # depends on values only known inside the subtree
                if isinstance(filename, str) and isinstance(directory, str):
                    path = posixpath.normpath(posixpath.join(directory, filename))
                    self.register_output(node, path, where, "outputs.%s (inside this task)" % semantic)

    # -- dependencies ----------------------------------------------------------------------------
    def resolve_files(self) -> None:
        """Attach each input to its producer in this plan, or leave it for the database lookup."""
        for node in self.nodes:
            for semantic, path in node.inputs.items():
                producer = self.producers.get(path)
                if producer is not None:
                    loop = self.producers.get("@loop:" + path)
                    if loop is not None and loop not in node.ancestors():
                        producer = loop
                    else:
                        # a producer inside a deferred or looping subtree the reader is not part of
                        for ancestor in producer.ancestors():
                            if ancestor.task_type == DO_WHILE and ancestor not in node.ancestors():
                                producer = ancestor
                    if producer is node:
                        raise ChainError("%s: field 'inputs.%s': the task reads %r, which it produces itself"
                                         % (self.where(node.chain_path), semantic, path))
                    node.file_dependencies.append((producer, path, semantic))
                else:
                    node.unresolved_inputs.append((path, semantic))

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
        stuck = [self.nodes[index] for index, count in remaining.items() if count > 0 and not self.nodes[index].is_control]
        stuck = stuck or [self.nodes[index] for index, count in remaining.items() if count > 0]
        if stuck:
            names = ", ".join(node.chain_path for node in stuck[:5])
            raise ChainError("%s: dependency cycle: these tasks wait for each other: %s" % (self.source, names))


def _walk_raw(item: dict):
    """Every task object below ``item`` in its raw (unevaluated) form."""
    for field in ("task_list", "else_task_list"):
        for task in item.get(field, []) or []:
            if isinstance(task, dict):
                yield task
                yield from _walk_raw(task)


def expand_chain(chain: dict, source: str, known_types: Iterable[str], job_name: str | None = None) -> Plan:
    """Expand a submitted chain into a :class:`Plan`; raises :class:`ChainError` on any problem."""
    unknown = sorted(set(chain) - CHAIN_KEYS)
    if unknown:
        raise ChainError("%s: unknown top-level field(s) %s; a chain has %s" % (source, unknown, sorted(CHAIN_KEYS)))
    if "task_list" not in chain:
        raise ChainError("%s: missing field 'task_list' (the list of tasks to run)" % source)
    name = job_name or chain.get("job_name") or posixpath.splitext(posixpath.basename(source))[0] or "job"
    if not isinstance(name, str):
        raise ChainError("%s: field 'job_name' must be a string" % source)
    working_directory = chain.get("working_directory", "")
    if not isinstance(working_directory, str):
        raise ChainError("%s: field 'working_directory' must be a string" % source)
    expander = Expander(known_types, source)
    root_item = {"task": CHAIN, "task_list": chain["task_list"], "job_name": name, "working_directory": working_directory}
    if "priority" in chain:
        root_item["priority"] = chain["priority"]
    context = Context(name, working_directory, {}, {}, 0, None, None)
    expander.expand_task(root_item, context, "", {})
    expander.resolve_files()
    expander.check_cycles()
    return Plan(job_name=name, source=source, nodes=expander.nodes)


def expand_control_task(
    task: dict, known_types: Iterable[str], requested_metadata: dict, child_requested: dict | None = None
) -> tuple[Plan, bool]:
    """Expand a control task at run time (its dependencies are met). Returns (plan of children, finished).

    ``task`` holds the database row's fields: id, task_type, chain_path, job_name, working_directory,
    description, metadata, priority, expansions. ``requested_metadata`` is what the task itself named in
    ``requires_metadata_from``; ``child_requested`` (do-while) is the output metadata of the children named
    in ``requires_metadata_from_child`` from the pass that just finished. ``finished`` is True when
    nothing more will be expanded (the control task is done once its children are).
    """
    description = task["description"]
    source = "%s (task %d)" % (task["job_name"], task["id"])
    expander = Expander(known_types, source)
    context = Context(
        task["job_name"], task["working_directory"], dict(task["metadata"]), dict(requested_metadata), task["priority"],
        None, task["id"],
    )
    node = Node(
        index=-1, chain_path=task["chain_path"], task_type=task["task_type"], is_control=True, name=None,
        job_name=task["job_name"], working_directory=task["working_directory"], description=description,
        metadata=dict(task["metadata"]), priority=task["priority"],
    )
    where = expander.where(task["chain_path"], context)
    child_context = dataclasses.replace(context, parent=None, parent_task_id=task["id"])
    expansions = task["expansions"]
    if task["task_type"] == DO_WHILE and expansions >= 1:
        metadata = dict(context.metadata, **{description["iteration_name"] + "_index": expansions})
        try:
            repeat = expressions.evaluate_value(
                description["repeat_criterion"], metadata, dict(requested_metadata, **(child_requested or {}))
            )
        except ExpressionError as error:
            raise ChainError("%s: field 'repeat_criterion': %s" % (where, error)) from None
        if not repeat:
            return Plan(task["job_name"], source, []), True
        expander.expand_children(node, child_context, task["chain_path"], where, pass_number=expansions + 1)
    elif expansions >= 1:
        return Plan(task["job_name"], source, []), True
    else:
        expander.expand_children(node, child_context, task["chain_path"], where, pass_number=1)
    for child in node.children:
        child.parent = None
        child.parent_task_id = task["id"]
    expander.resolve_files()
    expander.check_cycles()
    return Plan(task["job_name"], source, expander.nodes), task["task_type"] != DO_WHILE


def evaluate_late_fields(description: dict, metadata: dict, requested_metadata: dict, where: str) -> dict:
    """Evaluate a leaf's remaining fields once the metadata it requested exists (called at promotion)."""
    try:
        return expressions.evaluate_fields(description, metadata, requested_metadata, skip=LATE_FIELDS)
    except ExpressionError as error:
        raise ChainError("%s: %s" % (where, error)) from None
