"""The entry points that build plans: a submitted chain, a control task at run time, late leaf fields."""

from __future__ import annotations

import posixpath
from typing import Iterable

from eas_controller import expressions
from eas_controller.chains.expansion import Expander, random_streams
from eas_controller.chains.model import (
    CHAIN,
    DEFAULT_MAX_ITERATIONS,
    DO_WHILE,
    EARLY_FIELDS,
    LATE_FIELDS,
    RANDOM_SEED_FIELD,
    ChainError,
    Context,
    Node,
    Plan,
)
from eas_controller.chains.storable import check_stored_sizes
from eas_controller.chains.validation import validate_chain
from eas_controller.expressions import ExpressionError


def expand_chain(chain: dict, source: str, known_types: Iterable[str], job_name: str | None = None) -> Plan:
    """Validate and expand a submitted chain into a :class:`Plan`; raises :class:`ChainError` on any problem."""
    validate_chain(chain, source, set(known_types))
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
    context = Context(name, working_directory, {}, {}, 0, None, None, chain.get("random_seed"))
    expander.expand_task(root_item, context, "", {})
    expander.resolve_files()
    expander.check_cycles()
    check_stored_sizes(expander.nodes, source)
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
        None, task["id"], description.get(RANDOM_SEED_FIELD),
    )
    node = Node(
        index=-1, chain_path=task["chain_path"], task_type=task["task_type"], is_control=True, name=None,
        job_name=task["job_name"], working_directory=task["working_directory"], description=description,
        metadata=dict(task["metadata"]), priority=task["priority"],
    )
    where = expander.where(task["chain_path"], context)
    expansions = task["expansions"]
    if task["task_type"] == DO_WHILE and expansions >= 1:
        iteration_name = expander.name_field(description, "iteration_name", context, where, task["chain_path"])
        metadata = dict(context.metadata, **{iteration_name + "_index": expansions})
        try:
            repeat = expressions.evaluate_value(
                description["repeat_criterion"], metadata, dict(requested_metadata, **(child_requested or {})),
                random_streams(context, "%s#repeat_criterion{%d}" % (task["chain_path"], expansions)),
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
    check_stored_sizes(expander.nodes, source)
    return Plan(task["job_name"], source, expander.nodes), task["task_type"] != DO_WHILE


def evaluate_late_fields(description: dict, metadata: dict, requested_metadata: dict, where: str) -> dict:
    """Evaluate a leaf's remaining fields once the metadata it requested exists (called at promotion).

    The early fields (file names, names) were evaluated at expansion and are kept as they are. A chain with a
    ``random_seed`` left it (and the task's chain path) in the description for this moment: the draws are
    the ones the task would have had at submission.
    """
    description = dict(description)
    seeded = description.pop(RANDOM_SEED_FIELD, None)
    streams = None
    if isinstance(seeded, list) and len(seeded) == 2:
        streams = expressions.RandomStreams(seeded[0], seeded[1])
    try:
        return expressions.evaluate_fields(description, metadata, requested_metadata,
                                           skip=LATE_FIELDS + EARLY_FIELDS, random_streams=streams)
    except ExpressionError as error:
        raise ChainError("%s: %s" % (where, error)) from None
