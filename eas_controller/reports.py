"""Kept for callers of the former module: the read-only views now live in :mod:`eas_controller.views`."""

from eas_controller.views.jobs import (
    job_is_finished,
    job_state_counts,
    job_summary,
    resolve_job_ids,
    task_metadata,
)
from eas_controller.views.output import FORMATS, emit
from eas_controller.views.plan import render_plan
from eas_controller.views.progress import progress_summary
from eas_controller.views.tree import job_tree, render_tree

__all__ = ["FORMATS", "emit", "job_is_finished", "job_state_counts", "job_summary", "job_tree", "progress_summary",
           "render_plan", "render_tree", "resolve_job_ids", "task_metadata"]
