"""Task chains: read, validate and expand a chain into the tasks and dependencies it stands for.

A chain is JSON: ``{"job_name", "working_directory", "task_list": [...]}``. Submission runs in two steps:

1. :func:`validate_chain` checks the structure of every task once, including the bodies of loops and of
   branches that only expand at run time (types, required fields, names, ``requires_metadata_from``),
   so a mistake deep in an ``else`` branch is reported at submission, not hours later.
2. :class:`Expander` walks the task lists, evaluates expressions with the metadata each task inherits,
   unrolls loops, and infers dependencies from file names (``inputs`` read what ``outputs`` of another
   task write) and from ``requires_metadata_from``.

Control-flow tasks stay in the tree as parents of what they expanded into. When what they need is not
known yet (a conditional or loop that reads a sibling's metadata, the next pass of a do-while), they are
left for the scheduler, which calls :func:`expand_control_task` once the metadata exists.

Nothing here touches the database: the result is a :class:`Plan` that :mod:`eas_controller.submission`
writes in one transaction. Every error names the chain file and the task's path in it.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import posixpath
from typing import Any, Iterable, Iterator

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
EARLY_FIELDS = ("task", "name", "inputs", "outputs", "job_name", "working_directory", "priority",
                "requires_metadata_from")
CHAIN_KEYS = {"job_name", "working_directory", "task_list", "priority", "comment"}
#: fields every task may have
COMMON_KEYS = {"task", "name", "job_name", "working_directory", "requires_metadata_from", "priority", "comment"}
#: the fields each control-flow type accepts besides the common ones
CONTROL_KEYS = {
    CHAIN: {"task_list"},
    FOR_LOOP: {"parameter", "values", "linear_range", "log_range", "task_list"},
    CONDITIONAL: {"criterion", "task_list", "else_task_list"},
    DO_WHILE: {"iteration_name", "task_list", "repeat_criterion", "requires_metadata_from_child", "max_iterations"},
}
LOOP_FORMS = ("values", "linear_range", "log_range")
MAX_LOOP_VALUES = 1_000_000
DEFAULT_MAX_ITERATIONS = 1000


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
    metadata_from: list = dataclasses.field(default_factory=list)  # earlier sibling Nodes
    file_dependencies: list = dataclasses.field(default_factory=list)  # (Node, relative_path, semantic)
    unresolved_inputs: list = dataclasses.field(default_factory=list)  # (relative_path, semantic) for the DB
    deferred_outputs: list = dataclasses.field(default_factory=list)  # files a deferred subtree will make

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


# -- reading ---------------------------------------------------------------------------------------


def read_chain_text(text: str, source: str) -> dict:
    """Parse JSON with an error that gives line and column."""
    try:
        chain = json.loads(text)
    except json.JSONDecodeError as error:
        raise ChainError(
            "%s: not valid JSON at line %d, column %d: %s" % (source, error.lineno, error.colno, error.msg)
        ) from None
    if not isinstance(chain, dict):
        raise ChainError("%s: a task chain must be a JSON object with a 'task_list', not %s"
                         % (source, _json_type(chain)))
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
    except UnicodeDecodeError as error:
        raise ChainError("%s: the task chain is not UTF-8 text (%s)" % (path, error.reason)) from None
    return read_chain_text(text, path), path


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


# -- loop values -----------------------------------------------------------------------------------


def loop_values(description: dict, where: str) -> list:
    """The values of an ``execution_for_loop``. Ranges include both ends: [start, end, count]."""
    forms = [key for key in LOOP_FORMS if key in description]
    if len(forms) != 1:
        raise ChainError("%s: execution_for_loop needs exactly one of 'values', 'linear_range', 'log_range'%s"
                         % (where, "" if not forms else " (it has %s)" % " and ".join(forms)))
    form = forms[0]
    spec = description[form]
    if form == "values":
        if not isinstance(spec, list) or not spec:
            raise ChainError("%s: field 'values' must be a non-empty list, not %s" % (where, _json_type(spec)
                                                                                    if spec != [] else "[]"))
        if len(spec) > MAX_LOOP_VALUES:
            raise ChainError("%s: field 'values' has more than %d entries" % (where, MAX_LOOP_VALUES))
        return list(spec)
    if not isinstance(spec, list) or len(spec) != 3:
        raise ChainError("%s: field '%s' must be [start, end, count], not %s" % (where, form, json.dumps(spec)))
    start, end, count = spec
    for label, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ChainError("%s: field '%s': %s must be a number, not %r" % (where, form, label, value))
    if isinstance(count, bool) or not isinstance(count, (int, float)) or int(count) != count:
        raise ChainError("%s: field '%s': count must be a whole number, not %r" % (where, form, count))
    count = int(count)
    if count < 1:
        raise ChainError("%s: field '%s': count must be at least 1, not %d" % (where, form, count))
    if count > MAX_LOOP_VALUES:
        raise ChainError("%s: field '%s': count must be at most %d" % (where, form, MAX_LOOP_VALUES))
    if form == "log_range" and (start <= 0 or end <= 0):
        raise ChainError("%s: field 'log_range': start and end must be positive, not %r and %r" % (where, start, end))
    if count == 1:
        return [start]
    if form == "linear_range":
        step = (end - start) / (count - 1)
        return [start + step * i for i in range(count - 1)] + [end]
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


#: the longest value the database columns hold (see database/schema.py)
MAX_LENGTHS = {"name": 255, "job_name": 255, "working_directory": 512, "path": 760, "semantic": 128}


def _check_length(value: Any, field: str, where: str) -> None:
    kind = ("semantic" if "semantic type" in field else "path" if field.startswith(("inputs.", "outputs."))
            else field)
    limit = MAX_LENGTHS.get(kind)
    if limit and isinstance(value, str) and len(value) > limit:
        raise ChainError("%s: field '%s' is %d characters long; at most %d are stored" % (
            where, field, len(value), limit))


def _directory(working_directory: str, where: str) -> str:
    """A working directory, normalised: relative to the data directory, never outside it ('' is its top)."""
    if not working_directory or posixpath.normpath(working_directory) == ".":
        return ""
    return _relative_path("", working_directory, where, "working_directory")


# -- structural validation (before any evaluation) --------------------------------------------------


def _requested_keys(value: Any) -> tuple[set, bool]:
    """Names read as ``requested_metadata['name']`` in the expressions of ``value``, and whether
    ``requested_metadata`` is used in any other way (a computed name) that cannot be checked statically."""
    keys: set = set()
    dynamic = False
    for text in _expression_texts(value):
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # the evaluator reports the syntax error with its own message
        parents = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "requested_metadata":
                parent = parents.get(node)
                if (isinstance(parent, ast.Subscript) and parent.value is node and isinstance(parent.slice, ast.Constant)
                        and isinstance(parent.slice.value, str)):
                    keys.add(parent.slice.value)
                else:
                    dynamic = True
    return keys, dynamic


def _expression_texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if expressions.is_expression(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _expression_texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _expression_texts(item)


class Validator:
    """Checks what can be checked without evaluating anything, for every task in the file exactly once.

    ``sources`` is the set of task names whose output metadata is in scope (``requires_metadata_from``
    of the task and of its enclosing control tasks); expressions may only read those.
    """

    def __init__(self, known_types: Iterable[str], source: str):
        self.known_types = set(known_types) | set(CONTROL_TYPES)
        self.source = source

    def fail(self, path: str, message: str) -> None:
        raise ChainError("%s: %s: %s" % (self.source, path or "<chain>", message))

    def check_type_name(self, task_type: Any, path: str) -> None:
        if not isinstance(task_type, str) or not task_type:
            self.fail(path, "field 'task' must be a task type name, not %s" % json.dumps(task_type))
        if expressions.is_expression(task_type):
            return  # known only once evaluated; checked then
        if task_type not in self.known_types:
            close = difflib.get_close_matches(task_type, sorted(self.known_types), n=3, cutoff=0.5)
            hint = "; did you mean %s?" % " or ".join(repr(c) for c in close) if close else (
                "; known types: %s" % ", ".join(sorted(self.known_types)))
            self.fail(path, "unknown task type %r%s" % (task_type, hint))

    def task_list(self, task_list: Any, path: str, field: str, sources: frozenset) -> list[str]:
        """Validate a list of sibling tasks; returns their literal names."""
        list_path = "%s.%s" % (path, field) if path else field
        if not isinstance(task_list, list):
            self.fail(path, "field '%s' must be a list of tasks, not %s" % (field, _json_type(task_list)))
        names = []
        positions: dict[str, int] = {}
        computed = [position for position, item in enumerate(task_list)
                    if isinstance(item, dict) and expressions.is_expression(item.get("name"))]
        for position, item in enumerate(task_list):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, (str, int)) and not expressions.is_expression(name):
                name = str(name)
                if name in positions:
                    self.fail("%s[%d]" % (list_path, position), "duplicate task name %r: %s[%d] already has it; "
                              "names must be unique among siblings" % (name, list_path, positions[name]))
                positions[name] = position
        for position, item in enumerate(task_list):
            item_path = "%s[%d]" % (list_path, position)
            self.task(item, item_path, sources, positions, position, any(p < position for p in computed))
            name = item.get("name")
            if isinstance(name, str):
                names.append(name)
        return names

    def task(self, item: Any, path: str, sources: frozenset, sibling_positions: dict, position: int,
             computed_names_before: bool = False) -> None:
        if not isinstance(item, dict):
            self.fail(path, "each task must be a JSON object, not %s" % _json_type(item))
        if "task" not in item:
            self.fail(path, "missing field 'task' (the task type)")
        task_type = item["task"]
        self.check_type_name(task_type, path)
        if "name" in item and not isinstance(item["name"], (str, int)):
            self.fail(path, "field 'name' must be a string, not %s" % _json_type(item["name"]))
        for field in ("job_name", "working_directory"):
            if field in item and not isinstance(item[field], str):
                self.fail(path, "field '%s' must be a string, not %s" % (field, _json_type(item[field])))
        own = self.metadata_sources(item, path, sibling_positions, position, computed_names_before)
        in_scope = sources | frozenset(own)
        if task_type in CONTROL_TYPES:
            self.control(item, path, task_type, in_scope)
        else:
            for field in ("task_list", "else_task_list", "repeat_criterion", "requires_metadata_from_child"):
                if field in item:
                    self.fail(path, "field '%s' belongs to control-flow tasks; a %r task has no such field"
                              % (field, task_type))
            for field in ("inputs", "outputs"):
                files = item.get(field)
                if files is not None and not isinstance(files, dict) and not expressions.is_expression(files):
                    self.fail(path, "field '%s' must be an object {semantic type: file name}, not %s"
                              % (field, _json_type(files)))
                if expressions.uses_requested_metadata(files):
                    self.fail(path, "field '%s' cannot use requested_metadata: file names must be known at "
                              "submission to infer dependencies" % field)
            self.requested_usage(item, path, in_scope)

    def metadata_sources(self, item: dict, path: str, sibling_positions: dict, position: int,
                         computed_names_before: bool = False) -> list[str]:
        names = item.get("requires_metadata_from", [])
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.fail(path, "field 'requires_metadata_from' must be a list of names of earlier siblings")
        for name in names:
            if name not in sibling_positions and computed_names_before:
                continue  # an earlier sibling's name is an expression: checked once it is evaluated
            if name not in sibling_positions:
                known = sorted(n for n, p in sibling_positions.items() if p < position)
                self.fail(path, "field 'requires_metadata_from' names %r, but no sibling task has that name "
                          "(earlier siblings: %s)" % (name, ", ".join(map(repr, known)) or "none"))
            if sibling_positions[name] >= position:
                what = "itself" if sibling_positions[name] == position else "a later sibling (position %d)" % (
                    sibling_positions[name])
                self.fail(path, "field 'requires_metadata_from' names %r, which is %s; a task can only read the "
                          "metadata of siblings listed before it" % (name, what))
        return names

    def requested_usage(self, fields: dict, path: str, sources: frozenset) -> None:
        for field, value in fields.items():
            keys, dynamic = _requested_keys(value)
            if (keys or dynamic) and not sources:
                self.fail(path, "field '%s' reads requested_metadata, but neither this task nor an enclosing "
                          "control task names any task in 'requires_metadata_from'" % field)
            missing = sorted(keys - sources)
            if missing:
                self.fail(path, "field '%s' reads requested_metadata[%r], but %r is not in requires_metadata_from "
                          "(in scope: %s)" % (field, missing[0], missing[0], ", ".join(map(repr, sorted(sources)))))

    def control(self, item: dict, path: str, task_type: str, sources: frozenset) -> None:
        allowed = COMMON_KEYS | CONTROL_KEYS[task_type]
        for key in item:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = "; did you mean %r?" % close[0] if close else ""
                if key in ("inputs", "outputs"):
                    hint = "; control-flow tasks make no files themselves (their children do)"
                self.fail(path, "%s has no field %r%s (its fields: %s)" % (
                    task_type, key, hint, ", ".join(sorted(CONTROL_KEYS[task_type]))))
        if task_type in (CHAIN, FOR_LOOP, DO_WHILE) and "task_list" not in item:
            self.fail(path, "%s needs a 'task_list'" % task_type)
        if task_type == DO_WHILE and item["task_list"] == []:
            self.fail(path, "execution_do_while_loop needs at least one task in its 'task_list'")
        if task_type == FOR_LOOP:
            if not isinstance(item.get("parameter"), str) or not item["parameter"]:
                self.fail(path, "execution_for_loop needs a 'parameter' (the name its values get in metadata)")
            settings = {key: value for key, value in item.items() if key in LOOP_FORMS}
            if len(settings) != 1 or not list(_expression_texts(settings)):
                loop_values(settings, "%s: %s" % (self.source, path))  # checkable now: check it now
            form, spec = next(iter(settings.items()))
            if form != "values" and isinstance(spec, list) and len(spec) == 3 and not isinstance(spec[2], str):
                count = spec[2]
                if isinstance(count, bool) or not isinstance(count, (int, float)) or count != int(count) or count < 1:
                    self.fail(path, "field '%s': count must be a whole number of at least 1, not %s"
                              % (form, json.dumps(count)))
            self.requested_usage(settings, path, sources)
        if task_type == CONDITIONAL:
            if "criterion" not in item:
                self.fail(path, "execution_conditional needs a 'criterion' (an expression)")
            if "task_list" not in item and "else_task_list" not in item:
                self.fail(path, "execution_conditional needs a 'task_list' or an 'else_task_list'")
            self.requested_usage({"criterion": item["criterion"]}, path, sources)
        names = []
        if "task_list" in item:
            names = self.task_list(item["task_list"], path, "task_list", sources)
        if "else_task_list" in item:
            self.task_list(item["else_task_list"], path, "else_task_list", sources)
        if task_type == DO_WHILE:
            self.do_while(item, path, sources, names)

    def do_while(self, item: dict, path: str, sources: frozenset, body_names: list[str]) -> None:
        for field in ("iteration_name", "repeat_criterion"):
            if field not in item:
                self.fail(path, "execution_do_while_loop needs '%s'" % field)
        if not isinstance(item["iteration_name"], str) or not item["iteration_name"]:
            self.fail(path, "field 'iteration_name' must be a name (a string)")
        limit = item.get("max_iterations", DEFAULT_MAX_ITERATIONS)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            self.fail(path, "field 'max_iterations' must be a whole number of at least 1, not %s" % json.dumps(limit))
        children = item.get("requires_metadata_from_child", [])
        if isinstance(children, str):
            children = [children]
        if not isinstance(children, list) or not all(isinstance(n, str) for n in children):
            self.fail(path, "field 'requires_metadata_from_child' must be a list of names of tasks in its task_list")
        body = {task.get("name"): task for task in item["task_list"] if isinstance(task, dict)}
        for name in children:
            if name not in body:
                self.fail(path, "field 'requires_metadata_from_child' names %r, which is not the name of a task "
                          "directly in its task_list (names there: %s)" % (name, ", ".join(map(repr, body_names))
                                                                           or "none"))
            if body[name].get("task") in CONTROL_TYPES:
                self.fail(path, "field 'requires_metadata_from_child' names %r, a %s: only worker tasks write "
                          "output metadata" % (name, body[name]["task"]))
        self.requested_usage({"repeat_criterion": item["repeat_criterion"]}, path, sources | frozenset(children))


def validate_chain(chain: Any, source: str, known_types: Iterable[str]) -> None:
    """Raise :class:`ChainError` for the first structural problem anywhere in the chain."""
    if not isinstance(chain, dict):
        raise ChainError("%s: a task chain must be a JSON object with a 'task_list', not %s" % (source, _json_type(chain)))
    unknown = sorted(set(chain) - CHAIN_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(CHAIN_KEYS), n=1)
        hint = " (did you mean %r?)" % close[0] if close else ""
        raise ChainError("%s: unknown top-level field %r%s; a chain has %s" % (
            source, unknown[0], hint, ", ".join(sorted(CHAIN_KEYS))))
    if "task_list" not in chain:
        raise ChainError("%s: missing field 'task_list' (the list of tasks to run)" % source)
    for field in ("job_name", "working_directory"):
        if field in chain and not isinstance(chain[field], str):
            raise ChainError("%s: field '%s' must be a string, not %s" % (source, field, _json_type(chain[field])))
    Validator(known_types, source).task_list(chain["task_list"], "", "task_list", frozenset())


# -- expansion -------------------------------------------------------------------------------------


class Expander:
    """Walks task lists and creates :class:`Node` objects; one instance per submission or run-time expansion."""

    def __init__(self, known_types: Iterable[str], source: str):
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

    def evaluate(self, value: Any, context: Context, where: str, field: str) -> Any:
        try:
            return expressions.evaluate_value(value, context.metadata, context.requested_metadata)
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
        task_type = self.check_type(self.evaluate(item["task"], context, where, "task"), where)
        name = self.evaluate(item.get("name"), context, where, "name")
        if name is not None and not isinstance(name, str):
            name = str(name)
        if name is not None and name in siblings:
            raise ChainError("%s: duplicate task name %r among its siblings (%s has it too)"
                             % (where, name, siblings[name].chain_path))
        job_name = self.evaluate(item.get("job_name", context.job_name), context, where, "job_name")
        working_directory = self.evaluate(item.get("working_directory", context.working_directory), context, where,
                                          "working_directory")
        if not isinstance(working_directory, str):
            raise ChainError("%s: field 'working_directory' must be a string, not %r" % (where, working_directory))
        working_directory = _directory(working_directory, where)
        for field, value in (("name", name), ("job_name", job_name), ("working_directory", working_directory)):
            _check_length(value, field, where)
        priority = self.evaluate(item.get("priority", context.priority), context, where, "priority")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ChainError("%s: field 'priority' must be a whole number, not %r" % (where, priority))

        metadata_from = self.metadata_sources(item, siblings, where)
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

    def metadata_sources(self, item: dict, siblings: dict[str, Node], where: str) -> list[Node]:
        names = item.get("requires_metadata_from", [])
        if isinstance(names, str):
            names = [names]
        sources = []
        for name in names:
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
                    description[field] = self.evaluate(item[field], context, where, field)
            node.needs_evaluation = True
        else:
            try:
                description = expressions.evaluate_fields(item, context.metadata, context.requested_metadata,
                                                          skip=LATE_FIELDS)
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
                _check_length(semantic, "%s (semantic type)" % field, where)
                resolved[semantic] = _relative_path(node.working_directory, filename, where, "%s.%s" % (field, semantic))
                _check_length(resolved[semantic], "%s.%s" % (field, semantic), where)
            setattr(node, field, resolved)
        for semantic, path in node.outputs.items():
            self.register_output(node, path, where, "outputs.%s" % semantic)

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
            settings = self.evaluate({k: v for k, v in item.items() if k in LOOP_FORMS}, context, where, "loop")
            parameter = item["parameter"]
            values = loop_values(settings, where)
            node.description = dict(item, loop_values=values)
            for index, value in enumerate(values):
                metadata = dict(context.metadata, **{parameter: value, parameter + "_index": index})
                iteration = dataclasses.replace(context, metadata=metadata)
                node.children.extend(self.expand_list(item["task_list"], iteration,
                                                      "%s{%s_index=%d}" % (path, parameter, index)))
        elif node.task_type == CONDITIONAL:
            criterion = self.evaluate(item["criterion"], context, where, "criterion")
            node.description = dict(item, criterion_value=bool(criterion))
            field = "task_list" if criterion else "else_task_list"
            node.children = self.expand_list(item.get(field, []), context, path, field)
        elif node.task_type == DO_WHILE:
            metadata = dict(context.metadata, **{item["iteration_name"] + "_index": pass_number})
            iteration = dataclasses.replace(context, metadata=metadata)
            node.children = self.expand_list(
                item["task_list"], iteration, "%s{%s_index=%d}" % (path, item["iteration_name"], pass_number)
            )
            if node.index >= 0:
                # Readers outside the loop wait for the whole loop: a later pass may rewrite the file.
                for child in self.descendants(node):
                    for produced in child.outputs.values():
                        self.loop_producers.setdefault(produced, node)
                    for produced in child.deferred_outputs:
                        self.loop_producers.setdefault(produced, node)
        node.expanded = True

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
            if isinstance(filename, str) and filename.strip():
                yield posixpath.normpath(posixpath.join(directory, filename)), semantic


def expand_chain(chain: dict, source: str, known_types: Iterable[str], job_name: str | None = None) -> Plan:
    """Validate and expand a submitted chain into a :class:`Plan`; raises :class:`ChainError` on any problem."""
    known_types = set(known_types)
    validate_chain(chain, source, known_types)
    if job_name is not None and not job_name.strip():
        raise ChainError("%s: the job name must not be empty" % source)
    name = job_name or chain.get("job_name") or posixpath.splitext(posixpath.basename(source))[0] or "job"
    if source == "<stdin>" and not (job_name or chain.get("job_name")):
        name = "stdin"
    working_directory = chain.get("working_directory", "")
    expander = Expander(known_types, source)
    root_item = {"task": CHAIN, "task_list": chain["task_list"], "job_name": name,
                 "working_directory": working_directory}
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
    description, metadata, priority, expansions. ``requested_metadata`` is what the task (and its enclosing
    control tasks) named in ``requires_metadata_from``; ``child_requested`` (do-while) is the output metadata
    of the children named in ``requires_metadata_from_child`` from the pass that just finished. ``finished``
    is True when nothing more will be expanded (the control task is done once its children are).
    """
    description = task["description"]
    source = "job %s (task %d)" % (task["job_name"], task["id"])
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
    expansions = task["expansions"]
    if task["task_type"] == DO_WHILE and expansions >= 1:
        iteration_name = description["iteration_name"]
        metadata = dict(context.metadata, **{iteration_name + "_index": expansions})
        try:
            repeat = expressions.evaluate_value(
                description["repeat_criterion"], metadata, dict(requested_metadata, **(child_requested or {}))
            )
        except ExpressionError as error:
            raise ChainError("%s: field 'repeat_criterion' after pass %d: %s" % (where, expansions, error)) from None
        if not repeat:
            return Plan(task["job_name"], source, []), True
        limit = description.get("max_iterations", DEFAULT_MAX_ITERATIONS)
        if expansions >= limit:
            raise ChainError("%s: repeat_criterion %s is still true after %d passes, the loop's max_iterations; "
                             "raise max_iterations if more passes are intended" % (
                                 where, description["repeat_criterion"], expansions))
        expander.expand_children(node, context, task["chain_path"], where, pass_number=expansions + 1)
    elif expansions >= 1:
        return Plan(task["job_name"], source, []), True
    else:
        expander.expand_children(node, context, task["chain_path"], where, pass_number=1)
    expander.resolve_files()
    expander.check_cycles()
    return Plan(task["job_name"], source, expander.nodes), task["task_type"] != DO_WHILE


def evaluate_late_fields(description: dict, metadata: dict, requested_metadata: dict, where: str) -> dict:
    """Evaluate a leaf's remaining fields once the metadata it requested exists (called at promotion).

    The early fields (file names, names) were evaluated at expansion and are kept as they are.
    """
    try:
        return expressions.evaluate_fields(description, metadata, requested_metadata,
                                           skip=LATE_FIELDS + EARLY_FIELDS)
    except ExpressionError as error:
        raise ChainError("%s: %s" % (where, error)) from None
