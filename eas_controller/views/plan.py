"""A dry run's picture of a chain: the expanded tree, what waits for what, what expands at run time."""

from __future__ import annotations

import json

from eas_controller.chains import Plan
from eas_controller.views.output import short


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
        inherited = ", ".join("%s=%s" % (k, short(v, 20)) for k, v in node.metadata.items() if not k.endswith("_index"))
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
