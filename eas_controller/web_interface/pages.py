"""The console's pages (read-only): each asks the views for its rows in one read transaction and renders a
template. Lists are paged by id (``after``), so no page reads a whole 10^5-task job."""

from __future__ import annotations

import os
import time

from flask import Blueprint, abort, current_app, render_template, request, send_file
from werkzeug.security import safe_join

from eas_controller import states
from eas_controller.database.engine import read_transaction
from eas_controller.views import activity as activity_views
from eas_controller.views import errors as error_views
from eas_controller.views import explain as explain_views
from eas_controller.views import grid as grid_views
from eas_controller.views import jobs as job_views
from eas_controller.views import progress as progress_views
from eas_controller.views import task as task_views
from eas_controller.views import timings as timing_views
from eas_controller.views import tree as tree_views
from eas_controller.views import workers as worker_views
from eas_controller.views.output import when
from eas_controller.web_interface import charts

pages = Blueprint("pages", __name__)


@pages.app_template_filter("when")
def _when(value):
    return when(value) or ""


@pages.app_template_filter("pretty")
def _pretty(value):
    """JSON for people (Jinja escapes it for HTML afterwards, unlike ``tojson`` which is made for scripts)."""
    import json

    return json.dumps(value, indent=1, default=str, ensure_ascii=False)


@pages.app_context_processor
def _helpers():
    return dict(state_bar=charts.state_bar, task_states=states.TASK_STATES, colours=charts.STATE_COLOURS)


def _reader():
    return read_transaction(current_app.extensions["eas"]["engine"])


def _settings():
    return current_app.extensions["eas"]["settings"]


def _job(connection, job_id: int) -> dict:
    row = connection.execute(job_views.jobs.select().where(job_views.jobs.c.id == job_id)).first()
    if row is None:
        abort(404, "no job with id %d" % job_id)
    return dict(job_id=row.id, job_name=row.name, source=row.source, submitted_at=row.submitted_at,
                counts=job_views.job_state_counts(connection, row.id))


def _int_arg(name: str, default=None):
    value = request.args.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        abort(400, "%s must be a whole number" % name)


@pages.route("/")
def jobs_page():
    before = _int_arg("before")
    with _reader() as connection:
        rows = job_views.list_jobs(connection, limit=50, before_id=before)
    more = rows[-1]["job_id"] if len(rows) == 50 else None
    return render_template("jobs.html", jobs=rows, more=more, title="Jobs")


@pages.route("/job/<int:job_id>/tree")
def tree_page(job_id: int):
    depth = max(1, min(_int_arg("depth", 2), 5))
    with _reader() as connection:
        job = _job(connection, job_id)
        try:
            tree = tree_views.tree_page(connection, job_id, _int_arg("node"), depth, _int_arg("after", 0))
        except LookupError as error:
            abort(404, str(error))
    return render_template("tree.html", job=job, tree=tree, depth=depth, title="Task tree")


@pages.route("/task/<int:task_id>")
def task_page(task_id: int):
    with _reader() as connection:
        task = task_views.task_detail(connection, task_id)
        if task is None:
            abort(404, "no task with id %d" % task_id)
        explanation = explain_views.explain_task(connection, task_id, _settings().max_attempts)
    return render_template("task.html", task=task, explanation=explanation, title="Task %d" % task_id)


@pages.route("/job/<int:job_id>/products")
def products_page(job_id: int):
    with _reader() as connection:
        job = _job(connection, job_id)
        rows, more = task_views.products_page(connection, job_id, _int_arg("after", 0))
    return render_template("products.html", job=job, products=rows, more=more, title="File products")


@pages.route("/download/<path:relative_path>")
def download(relative_path: str):
    """A file under the data directory; anything that would leave it (``..``, absolute paths, symbolic links
    pointing out) is refused."""
    data_dir = os.path.realpath(_settings().data_dir)
    joined = safe_join(data_dir, relative_path)
    if joined is None:
        abort(403, "refused: the path leaves the data directory")
    real = os.path.realpath(joined)
    if os.path.commonpath([real, data_dir]) != data_dir:
        abort(403, "refused: the path leaves the data directory")
    if not os.path.isfile(real):
        abort(404, "no such product")
    return send_file(real, as_attachment=True, download_name=os.path.basename(real))


@pages.route("/job/<int:job_id>/timings")
def timings_page(job_id: int):
    by = request.args.get("by") or None
    with _reader() as connection:
        job = _job(connection, job_id)
        rows = timing_views.timings(connection, None, request.args.get("task_type") or None, by, job_id=job_id)
    return render_template("timings.html", job=job, rows=rows, columns=timing_views.timing_columns(by), by=by,
                           title="Timings")


@pages.route("/job/<int:job_id>/passfail")
def passfail_page(job_id: int):
    with _reader() as connection:
        job = _job(connection, job_id)
        rows, columns = grid_views.pass_fail_grid(connection, None, request.args.get("task_type") or None, limit=2000,
                                                  job_id=job_id)
    return render_template("passfail.html", job=job, rows=rows, columns=columns, title="Pass/fail grid")


@pages.route("/job/<int:job_id>/errors")
def errors_page(job_id: int):
    with _reader() as connection:
        job = _job(connection, job_id)
        rows = error_views.errors_list(connection, None, request.args.get("task_type") or None, verbose=True, limit=200,
                                       job_id=job_id)
    return render_template("errors.html", job=job, rows=rows, title="Errors")


@pages.route("/job/<int:job_id>/progress")
def progress_page(job_id: int):
    with _reader() as connection:
        job = _job(connection, job_id)
        rows = progress_views.progress_summary(connection, job_id=job_id)
        series = progress_views.completions_over_time(connection, job_id)
    return render_template("progress.html", job=job, rows=rows, chart=charts.progress_chart(series),
                           title="Progress")


@pages.route("/job/<int:job_id>/activity")
def activity_page(job_id: int):
    with _reader() as connection:
        job = _job(connection, job_id)
        rows = activity_views.activity(connection, job_id)
    workers = sorted({row["worker"] for row in rows})
    return render_template("activity.html", job=job, chart=charts.activity_chart(rows, time.time()), attempts=len(rows),
                           workers=workers, title="Activity")


@pages.route("/workers")
def workers_page():
    with _reader() as connection:
        rows = worker_views.worker_list(connection, limit=200)
        queued = _queue_counts(connection)
    return render_template("workers.html", workers=rows, queues=queued, title="Workers and queues")


def _queue_counts(connection) -> list[dict]:
    """Attempts queued and running per task type (the attempts table, not the broker: read-only and fast)."""
    import sqlalchemy as sa

    from eas_controller.database.schema import attempts

    rows = connection.execute(sa.select(attempts.c.task_type, attempts.c.state, sa.func.count())
                              .where(attempts.c.state.in_([states.A_QUEUED, states.A_RUNNING]))
                              .group_by(attempts.c.task_type, attempts.c.state)).all()
    result: dict[str, dict] = {}
    for task_type, state, count in rows:
        result.setdefault(task_type, dict(task_type=task_type, queued=0, running=0))[state] = count
    return [result[name] for name in sorted(result)]
