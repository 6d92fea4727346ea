"""Kept for callers of the former module: the read-only views now live in :mod:`eas_controller.views`."""

from eas_controller.views.jobs import (  # noqa: F401
    job_is_finished,
    job_state_counts,
    job_summary,
    resolve_job_ids,
    task_metadata,
)
from eas_controller.views.output import FORMATS, emit  # noqa: F401
from eas_controller.views.plan import render_plan  # noqa: F401
from eas_controller.views.progress import progress_summary  # noqa: F401
from eas_controller.views.tree import job_tree, render_tree  # noqa: F401
