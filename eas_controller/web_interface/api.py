"""The REST API: a Flask blueprint over the same functions the scripts call.

``create_api_blueprint(settings)`` mounts under ``/api`` in the web console's application or in
``create_api_app(settings)`` alone (``rest_api.py --port``). Reads are open, like the console; every write
needs ``Authorization: Bearer TOKEN`` with a token from the settings' ``api_tokens``, compared in constant
time. Errors are JSON ``{"error": message}`` with the message the scripts print; bad input is a 4xx.
"""

from __future__ import annotations

import functools
import hmac
import json
from typing import Any, Callable

from flask import Blueprint, Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from eas_controller import states
from eas_controller.config import Settings

PREFIX = "/api"
MAX_ID = 2147483647
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Lists and objects nested deeper than this are refused (a chain level is two: a task and its task_list).
MAX_NESTING = 128


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str):
    response = jsonify(error=message)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="eas"'
    return response


# -- input ----------------------------------------------------------------------------------------------------


def _int_arg(name: str, default: int | None = None, minimum: int = 0, maximum: int = MAX_ID) -> int | None:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        raise ApiError(400, "query parameter %r must be a whole number, not %r" % (name, text)) from None
    if not minimum <= value <= maximum:
        raise ApiError(400, "query parameter %r must be between %d and %d, not %d" % (name, minimum, maximum, value))
    return value


def _path_id(text: str, what: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ApiError(400, "%s id must be a whole number, not %r" % (what, text)) from None
    if not 1 <= value <= MAX_ID:
        raise ApiError(404, "no %s %s" % (what, text))
    return value


def _paging(maximum: int = 1000, default: int = 100) -> tuple[int, int]:
    return _int_arg("limit", default, 1, maximum), _int_arg("offset", 0, 0, 1000000000)


def _json_body() -> Any:
    if not request.is_json:
        raise ApiError(415, "the request body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON (or nested too deeply)") from None
    if _depth(body) > MAX_NESTING:
        raise ApiError(400, "the request body is nested more than %d levels deep" % MAX_NESTING)
    return body


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursion: it may be deep); NUL characters refused."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
            if isinstance(item, dict):
                stack.extend((key, level) for key in item)
        elif isinstance(item, str) and "\x00" in item:
            raise ApiError(400, "the request body holds a NUL character (\\u0000), which no database stores")
    return deepest


def _selection(body: Any, allowed: set[str]):
    from eas_controller.recovery import Selection

    if not isinstance(body, dict):
        raise ApiError(400, 'the request body must be a JSON object like {"job_name": "survey"}')
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "unknown field(s) %s; allowed: %s" % (unknown, sorted(allowed)))
    nulls = sorted(key for key, value in body.items() if value is None)
    if nulls:
        raise ApiError(400, "field(s) %s must not be null: leave them out instead" % nulls)
    job_name, job_id, task_types = body.get("job_name"), body.get("job_id"), body.get("task_types")
    if job_name is not None and (not isinstance(job_name, str) or not job_name or len(job_name) > 255):
        raise ApiError(400, "field 'job_name' must be a non-empty string of at most 255 characters")
    if job_id is not None and (isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= MAX_ID):
        raise ApiError(400, "field 'job_id' must be a job id (a whole number from 1)")
    if task_types is not None and (
        not isinstance(task_types, list) or not all(isinstance(name, str) and name for name in task_types)
    ):
        raise ApiError(400, "field 'task_types' must be a list of task type names")
    for flag in ("dry_run", "all"):
        if flag in body and not isinstance(body[flag], bool):
            raise ApiError(400, "field %r must be true or false" % flag)
    return Selection(job_name=job_name, job_id=job_id, task_types=sorted(set(task_types)) if task_types else None)


# -- the blueprint --------------------------------------------------------------------------------------------


def create_api_blueprint(settings: Settings) -> Blueprint:
    """The API's routes under ``/api``, on ``settings``' database; tokens are read from ``settings``."""
    from eas_controller.web_interface import api_queries as queries

    api = Blueprint("eas_api", __name__, url_prefix=PREFIX)

    def engine():
        from eas_controller.api.jobs import engine_for

        return engine_for(settings)

    def reading(body: Callable):
        from eas_controller.database.engine import read_transaction

        with read_transaction(engine()) as connection:
            return body(connection)

    def requires_token(view: Callable) -> Callable:
        @functools.wraps(view)
        def checked(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "this request changes the database: send Authorization: Bearer TOKEN")
            token = token.strip().encode()
            accepted = False
            for known in settings.api_tokens:  # every token compared, each in constant time
                accepted |= hmac.compare_digest(known.encode(), token)
            if not accepted:
                raise ApiError(
                    403,
                    "the token is not accepted (see api_tokens in %s)"
                    % (settings.settings_path or "the settings file"),
                )
            return view(*args, **kwargs)

        return checked

    @api.errorhandler(ApiError)
    def api_error(error: ApiError):
        return _error(error.status, error.message)

    @api.app_errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if not request.path.startswith(PREFIX + "/"):
            return error  # the console's own pages keep their own error pages
        response = _error(error.code or 500, error.description or error.name)
        for name, value in error.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    def expected_errors(error: Exception):
        """The errors the scripts print as one line (cli.run) are the client's: 400; a database that cannot be
        reached is 503."""
        from sqlalchemy.exc import OperationalError

        from eas_controller.config import redact_url

        if isinstance(error, OperationalError):
            return _error(503, "cannot use the database: %s" % redact_url(str(error.orig).splitlines()[0]))
        return _error(400, str(error))

    from eas_controller.chains import ChainError
    from eas_controller.database.engine import DatabaseError
    from eas_controller.registry import RegistryError
    from sqlalchemy.exc import OperationalError

    for kind in (ChainError, RegistryError, DatabaseError, OperationalError):
        api.register_error_handler(kind, expected_errors)

    @api.before_request
    def refuse_nul_characters():
        if any("\x00" in key or "\x00" in value for key, value in request.args.items(multi=True)):
            raise ApiError(400, "a query parameter holds a NUL character, which no database stores")

    @api.get("/openapi.json")
    def openapi():
        from eas_controller.web_interface.openapi import document

        return jsonify(document())

    # -- reads ------------------------------------------------------------------------------------------------
    @api.get("/jobs")
    def list_jobs():
        limit, offset = _paging()
        return jsonify(reading(lambda c: queries.list_jobs(c, request.args.get("name"), limit, offset)))

    def one(what: str, text: str, query):
        """The JSON of ``query(connection, id)`` for the id in the path, or 404 when there is no such row."""
        number = _path_id(text, what)
        found = reading(lambda c: query(c, number))
        if found is None:
            raise ApiError(404, "no %s %d" % (what, number))
        return jsonify(found)

    @api.get("/jobs/<job_id>")
    def get_job(job_id: str):
        return one("job", job_id, queries.get_job)

    @api.get("/tasks")
    def list_tasks():
        limit, offset = _paging()
        state = request.args.get("state")
        if state is not None and state not in states.TASK_STATES:
            raise ApiError(
                400, "query parameter 'state' must be one of %s, not %r" % (", ".join(states.TASK_STATES), state)
            )
        filters = dict(
            job_id=_int_arg("job_id", None, 1),
            parent_id=_int_arg("parent_id", None, 1),
            state=state,
            task_type=request.args.get("task_type"),
            job_name=request.args.get("job_name"),
        )
        return jsonify(reading(lambda c: queries.list_tasks(c, filters, limit, offset)))

    def existing_task(task_id: str) -> int:
        number = _path_id(task_id, "task")
        if not reading(lambda c: queries.task_exists(c, number)):
            raise ApiError(404, "no task %d" % number)
        return number

    @api.get("/tasks/<task_id>")
    def get_task(task_id: str):
        return one("task", task_id, queries.get_task)

    @api.get("/tasks/<task_id>/attempts")
    def task_attempts(task_id: str):
        number = existing_task(task_id)
        return jsonify(reading(lambda c: queries.list_attempts(c, number)))

    @api.get("/tasks/<task_id>/logs")
    def task_logs(task_id: str):
        number = existing_task(task_id)
        attempt_id = _int_arg("attempt_id", None, 1)
        after = _int_arg("after", 0, 0, 2**62)
        limit = _int_arg("limit", 1000, 1, 10000)
        return jsonify(reading(lambda c: queries.list_logs(c, number, attempt_id, after, limit)))

    @api.get("/tasks/<task_id>/products")
    def task_products(task_id: str):
        number = existing_task(task_id)
        return jsonify(reading(lambda c: queries.list_products(c, number)))

    # -- writes -----------------------------------------------------------------------------------------------
    @api.post("/jobs")
    @requires_token
    def submit_chain():
        from eas_controller.api.jobs import submit

        chain = _json_body()
        job_name = request.args.get("job_name")
        if job_name is not None and not job_name.strip():
            raise ApiError(400, "query parameter 'job_name' must not be empty")
        if not isinstance(chain, dict):
            raise ApiError(400, "the request body must be a task chain: a JSON object with a task_list")
        job = submit(chain, job_name, settings, source="rest-api")
        with_counts = reading(lambda c: queries.get_job(c, job.id))
        message = "submitted job %d (%s): %d tasks (%d to run on workers, %d control-flow) from %s" % (
            job.id,
            job.name,
            with_counts["tasks"],
            len(job.task_ids),
            with_counts["tasks"] - len(job.task_ids),
            "rest-api",
        )
        response = jsonify(
            job_id=job.id,
            job_name=job.name,
            tasks=with_counts["tasks"],
            worker_tasks=len(job.task_ids),
            task_ids=job.task_ids,
            message=message,
        )
        response.status_code = 201
        return response

    def act(name: str, body: Callable[[Any, Any, Any, bool], tuple[dict, str]], extra_fields: set[str] = frozenset()):
        from eas_controller import recovery
        from eas_controller.queues import make_queue

        data = _json_body()
        selection = _selection(data, {"job_name", "job_id", "task_types", "dry_run"} | set(extra_fields))
        dry_run = bool(data.get("dry_run", False))
        try:
            recovery.check_task_types(engine(), selection.task_types)
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        queue = make_queue(settings, engine())
        try:
            report, message = body(queue, selection, data, dry_run)
        finally:
            queue.close()
        return jsonify(message=message, report=report, dry_run=dry_run)

    @api.post("/cancel")
    @requires_token
    def cancel():
        from eas_controller import recovery

        def body(queue, selection, data, dry_run):
            if selection.is_everything and not data.get("all"):
                raise ApiError(400, 'name what to cancel (job_name, job_id, task_types), or give "all": true')
            report = recovery.cancel(engine(), queue, selection, dry_run)
            return report, (
                "%scancelled %d unfinished task(s) of %s: %d queued attempt(s) taken out of the queue, "
                "%d running attempt(s) told to stop"
                % (
                    "dry run: would have " if dry_run else "",
                    report["tasks"],
                    selection.describe(),
                    report["queued_removed"],
                    report["running_stopped"],
                )
            )

        return act("cancel", body, {"all"})

    @api.post("/reschedule")
    @requires_token
    def reschedule():
        from eas_controller import recovery

        def body(queue, selection, data, dry_run):
            report = recovery.reschedule_unfinished(engine(), queue, selection, settings.max_attempts, dry_run)
            prefix = "dry run: would have " if dry_run else ""
            message = (
                "%sexpired %d lease(s) (every task; %d retried, %d failed for good)\n"
                "%smade ready %d failed task(s), %d task(s) waiting out a retry backoff and %d task(s) left "
                "without a live attempt, of %s"
                % (
                    prefix,
                    report["stalled"],
                    report["stalled_retried"],
                    report["stalled_failed"],
                    prefix,
                    report["failed"],
                    report["backoff"],
                    report["orphans"],
                    selection.describe(),
                )
            )
            if not dry_run:
                message += "\nqueued %d new attempt(s)" % report["promoted"]
            return report, message

        return act("reschedule", body)

    @api.post("/hold")
    @requires_token
    def hold():
        from eas_controller import recovery

        def body(queue, selection, data, dry_run):
            report = recovery.empty_queue(engine(), queue, selection, hold=True, dry_run=dry_run)
            prefix = "dry run: would have " if dry_run else ""
            return report, (
                "%sremoved %d queued attempt(s) of %s from the %s queue; %d task(s) held\n"
                "%sheld %d ready or waiting task(s) as well; release them with --release"
                % (
                    prefix,
                    report["removed"],
                    selection.describe(),
                    queue.name,
                    report["tasks"],
                    prefix,
                    report["held_ready"],
                )
            )

        return act("hold", body)

    @api.post("/release")
    @requires_token
    def release():
        from eas_controller import recovery

        def body(queue, selection, data, dry_run):
            report = recovery.release_held(engine(), selection, dry_run)
            return report, "%sreleased %d held task(s) of %s" % (
                "dry run: would have " if dry_run else "",
                report["released"],
                selection.describe(),
            )

        return act("release", body)

    return api


def create_api_app(settings: Settings) -> Flask:
    """The REST API on its own (no console pages)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.register_blueprint(create_api_blueprint(settings))
    return app
