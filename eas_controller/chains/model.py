"""The shapes a chain turns into: control-flow type names, field groups, and the nodes of a plan.

Shared by validation, expansion and the writers of plans (:mod:`eas_controller.submission`), so every
step agrees on which fields a task may carry and which are evaluated when.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

_NOT_ON_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def one_line(text: str, limit: int = 4000) -> str:
    """``text`` as one printable line: control characters, line separators and lone surrogates escaped."""
    text = _NOT_ON_ONE_LINE.sub(lambda match: match.group().encode("unicode_escape", "backslashreplace")
                                .decode("ascii") if ord(match.group()) < 0xd800 else "\\u%04x" % ord(match.group()),
                                text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


CHAIN = "execution_chain"
FOR_LOOP = "execution_for_loop"
CONDITIONAL = "execution_conditional"
DO_WHILE = "execution_do_while_loop"

#: fields that are evaluated later, in their own context, never by their parent
LATE_FIELDS = ("task_list", "else_task_list", "repeat_criterion")
#: fields that must be known when the task is created (dependencies are inferred from them)
EARLY_FIELDS = ("task", "name", "inputs", "outputs", "job_name", "working_directory", "priority",
                "requires_metadata_from", "concurrency_limit")
CHAIN_KEYS = {"job_name", "working_directory", "task_list", "priority", "comment", "random_seed", "resume"}
#: where a control task (or a leaf evaluated late) keeps the chain's random_seed for run-time evaluation
RANDOM_SEED_FIELD = "eas_random_seed"
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
    """A chain cannot be submitted or expanded; the message names the file, the task path and the field.

    Its text is always one printable line, whatever the chain's strings hold.
    """

    def __str__(self) -> str:
        return one_line(super().__str__())


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
    limit_key: str | None = None  # concurrency limit: the task's key and its maximum (None: no limit)
    limit_max: int | None = None
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
    random_seed: Any = None  # the chain's random_seed: None draws fresh numbers



def json_type(value: Any) -> str:
    """How a JSON value is named in messages ("an object", "a list"...)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")
