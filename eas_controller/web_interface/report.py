"""The run report: one self-contained HTML file about a job (summary, activity timeline, timings per task
type, failures, pass/fail grid), like Nextflow's ``-with-report`` or Snakemake's ``--report``.

Styles and charts are inside the file (inline CSS, inline SVG, no script), so it opens offline and can be
attached to a paper or an e-mail. Jinja autoescaping covers every user string.
"""

from __future__ import annotations

import os
import time

import jinja2
from sqlalchemy.engine import Connection

from eas_controller import states
from eas_controller.views import activity as activity_views
from eas_controller.views import errors as error_views
from eas_controller.views import grid as grid_views
from eas_controller.views import jobs as job_views
from eas_controller.views import progress as progress_views
from eas_controller.views import timings as timing_views
from eas_controller.views.output import when
from eas_controller.web_interface import charts

HERE = os.path.dirname(os.path.abspath(__file__))


def report_html(connection: Connection, job_name: str | None = None, job_id: int | None = None,
                grid_limit: int = 5000, failure_limit: int = 200) -> str:
    """The report of the newest job with that name (or of that id) as one HTML document."""
    ids = job_views.require_job_ids(connection, job_name, job_id)
    if ids is None:
        raise job_views.UnknownJob("name a job with --job-name or --job-id")
    job_id = ids[-1]
    job = connection.execute(job_views.jobs.select().where(job_views.jobs.c.id == job_id)).first()
    counts = job_views.job_state_counts(connection, job_id)
    attempts = activity_views.activity(connection, job_id)
    now = time.time()
    grid, grid_columns = grid_views.pass_fail_grid(connection, job_id=job_id, limit=grid_limit)
    started = min((a["started_at"] for a in attempts), default=None)
    ended = max((a["ended_at"] or now for a in attempts), default=None)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["when"] = lambda value: when(value) or ""
    with open(os.path.join(HERE, "static", "style.css")) as handle:
        style = handle.read()
    return environment.get_template("report.html").render(
        job=dict(job_id=job.id, job_name=job.name, source=job.source, submitted_at=job.submitted_at, counts=counts),
        total=sum(counts.values()), started=started, ended=ended, generated=now, style=style,
        progress=progress_views.progress_summary(connection, job_id=job_id),
        progress_columns=progress_views.PROGRESS_COLUMNS,
        timings=timing_views.timings(connection, job_id=job_id), timing_columns=timing_views.TIMING_COLUMNS,
        failures=error_views.errors_list(connection, job_id=job_id, limit=failure_limit, verbose=True),
        grid=grid, grid_columns=grid_columns, grid_limit=grid_limit,
        activity_chart=charts.activity_chart(attempts, now), state_bar=charts.state_bar(counts, 400, 16),
        progress_chart=charts.progress_chart(progress_views.completions_over_time(connection, job_id)),
        workers=sorted({a["worker"] for a in attempts}), attempts=len(attempts), task_states=states.TASK_STATES)
