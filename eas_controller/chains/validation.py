"""Structural validation of a whole chain before anything is evaluated.

Every task in the file is checked once, including loop bodies and the branches that only expand at run
time, so a mistake deep in an ``else`` branch is reported at submission, not hours later.
"""

from __future__ import annotations

import ast
import difflib
import json
from typing import Any, Iterable, Iterator

from eas_controller import expressions, uris
from eas_controller.chains.loops import loop_values
from eas_controller.chains.paths import check_resources
from eas_controller.chains.storable import check_values
from eas_controller.chains.model import (
    CHAIN,
    CHAIN_KEYS,
    COMMON_KEYS,
    CONDITIONAL,
    CONTROL_KEYS,
    DEFAULT_MAX_ITERATIONS,
    DO_WHILE,
    FOR_LOOP,
    LOOP_FORMS,
    ChainError,
    json_type,
)
from eas_controller.registry import CONTROL_TYPES


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
        for key, item in value.items():  # keys are evaluated like values
            yield from _expression_texts(key)
            yield from _expression_texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _expression_texts(item)


#: stands in the scope of a task for a requires_metadata_from name that is an expression
COMPUTED_SOURCE = object()


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
            self.fail(path, "field '%s' must be a list of tasks, not %s" % (field, json_type(task_list)))
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
            self.fail(path, "each task must be a JSON object, not %s" % json_type(item))
        if "task" not in item:
            self.fail(path, "missing field 'task' (the task type)")
        task_type = item["task"]
        self.check_type_name(task_type, path)
        if "name" in item and not isinstance(item["name"], (str, int)):
            self.fail(path, "field 'name' must be a string, not %s" % json_type(item["name"]))
        for field in ("job_name", "working_directory"):
            if field in item and not isinstance(item[field], str):
                self.fail(path, "field '%s' must be a string, not %s" % (field, json_type(item[field])))
        own = self.metadata_sources(item, path, sibling_positions, position, computed_names_before)
        in_scope = sources | frozenset(COMPUTED_SOURCE if expressions.is_expression(n) else n for n in own)
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
                              % (field, json_type(files)))
                if expressions.uses_requested_metadata(files):
                    self.fail(path, "field '%s' cannot use requested_metadata: file names must be known at "
                              "submission to infer dependencies" % field)
                self.uris(files, path, field)
            self.resources(item.get("resources"), path)
            self.requested_usage(item, path, in_scope)

    def uris(self, files: Any, path: str, field: str) -> None:
        """URIs written as they are (not computed) in ``inputs`` / ``outputs``: checked here, so that one in a
        branch that expands at run time is refused at submission too."""
        if not isinstance(files, dict):
            return
        for semantic, value in files.items():
            if uris.is_uri(value) and not expressions.is_expression(semantic):
                try:
                    uris.check(value, writing=field == "outputs")
                except uris.UriError as error:
                    self.fail(path, "field '%s.%s': %s" % (field, semantic, error))

    def resources(self, resources: Any, path: str) -> None:
        """A task's ``resources.files``, where written as they are: {name: URI of a shared file}."""
        if resources is None or list(_expression_texts(resources)):
            return  # computed: checked once evaluated
        check_resources(resources, "%s: %s" % (self.source, path or "<chain>"))

    def metadata_sources(self, item: dict, path: str, sibling_positions: dict, position: int,
                         computed_names_before: bool = False) -> list[str]:
        names = item.get("requires_metadata_from", [])
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.fail(path, "field 'requires_metadata_from' must be a list of names of earlier siblings")
        for name in names:
            if expressions.is_expression(name):
                continue  # evaluated at expansion, then checked like a plain name
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
        if COMPUTED_SOURCE in sources:
            return  # a source's name is an expression: which names are in scope is known only at expansion
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
        raise ChainError("%s: a task chain must be a JSON object with a 'task_list', not %s" % (source, json_type(chain)))
    check_values(chain, source)
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
            raise ChainError("%s: field '%s' must be a string, not %s" % (source, field, json_type(chain[field])))
    if "resume" in chain and not isinstance(chain["resume"], bool):
        raise ChainError("%s: field 'resume' must be true or false, not %s" % (source, json_type(chain["resume"])))
    seed = chain.get("random_seed")
    if "random_seed" in chain and (isinstance(seed, bool) or not isinstance(seed, (int, str))
                                   or (isinstance(seed, str) and not 0 < len(seed) <= 255)):
        raise ChainError("%s: field 'random_seed' must be a whole number or a string of 1 to 255 characters, not %s"
                         % (source, json_type(seed) if not isinstance(seed, str) else "%d characters" % len(seed)))
    Validator(known_types, source).task_list(chain["task_list"], "", "task_list", frozenset())
