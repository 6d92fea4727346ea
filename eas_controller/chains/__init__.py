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


from eas_controller.chains.expansion import Expander
from eas_controller.chains.loops import loop_values
from eas_controller.chains.model import (CHAIN, CHAIN_KEYS, COMMON_KEYS, CONDITIONAL, CONTROL_KEYS,
                                         DEFAULT_MAX_ITERATIONS, DO_WHILE, EARLY_FIELDS, FOR_LOOP, LATE_FIELDS,
                                         LOOP_FORMS, MAX_LOOP_VALUES, ChainError, Context, Node, Plan)
from eas_controller.chains.paths import MAX_LENGTHS
from eas_controller.chains.plans import evaluate_late_fields, expand_chain, expand_control_task
from eas_controller.chains.reading import read_chain_file, read_chain_text
from eas_controller.chains.validation import Validator, validate_chain

__all__ = [
    "CHAIN", "CHAIN_KEYS", "COMMON_KEYS", "CONDITIONAL", "CONTROL_KEYS", "DEFAULT_MAX_ITERATIONS", "DO_WHILE",
    "EARLY_FIELDS", "FOR_LOOP", "LATE_FIELDS", "LOOP_FORMS", "MAX_LENGTHS", "MAX_LOOP_VALUES", "ChainError",
    "Context", "Expander", "Node", "Plan", "Validator", "evaluate_late_fields", "expand_chain",
    "expand_control_task", "loop_values", "read_chain_file", "read_chain_text", "validate_chain",
]
