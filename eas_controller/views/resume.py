"""How ``submit.py --resume`` shows its decisions: one row per worker task, what it does and why."""

from __future__ import annotations

from eas_controller.views.output import emit

COLUMNS = ("#", "task", "type", "chain path", "action", "reason", "reused from")


def decision_rows(decisions: list) -> list[dict]:
    """The decisions as JSON-ready objects (:meth:`eas_controller.resume.Decision.as_json`)."""
    return [decision.as_json() for decision in decisions]


def summary(decisions: list) -> str:
    reused = sum(1 for decision in decisions if decision.reused)
    return "resume: %d of %d worker tasks reused, %d to run" % (reused, len(decisions), len(decisions) - reused)


def render_decisions(decisions: list, output_format: str = "table") -> str:
    """A table (or JSON, or CSV) of what each task does: ``run`` with its reason, or ``reuse``."""
    rows = decision_rows(decisions)
    if output_format == "json":
        return emit(rows, "json")
    table = [{
        "#": row["index"], "task": row["task_name"] or "", "type": row["task_type"], "chain path": row["chain_path"],
        "action": row["action"], "reason": row["reason"],
        "reused from": ("attempt %d of task %d" % (row["reused_attempt_number"], row["reused_task_id"])
                        if row["action"] == "reuse" else ""),
    } for row in rows]
    return emit(table, output_format, COLUMNS)
