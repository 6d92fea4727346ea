"""The REST API's OpenAPI 3 document (served at ``/api/openapi.json``), written out so clients and the
fuzzing test hold the server to it: every field, type and status code a response can have is here."""

from __future__ import annotations

from eas_controller import __version__, states


def _nullable(kind: str, **extra) -> dict:
    return dict(type=kind, nullable=True, **extra)


def _ref(name: str) -> dict:
    return {"$ref": "#/components/schemas/%s" % name}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _closed(**properties) -> dict:
    """An object with exactly these properties, all required."""
    return dict(type="object", required=list(properties), additionalProperties=False, properties=properties)


def _open(schema: dict, **optional) -> dict:
    """``schema`` with more properties that a response may leave out."""
    return dict(schema, properties=dict(schema["properties"], **optional))


def _page(item: str) -> dict:
    return _closed(items=dict(type="array", items=_ref(item)), total=dict(type="integer", minimum=0),
                   limit=dict(type="integer"), offset=dict(type="integer"))


def _list(item: str) -> dict:
    return _closed(items=dict(type="array", items=_ref(item)), total=dict(type="integer", minimum=0))


ID = dict(type="integer", minimum=1, maximum=2147483647)
COUNTS = dict(type="object", additionalProperties=dict(type="integer", minimum=0))

SELECTION = dict(
    type="object",
    additionalProperties=False,
    description="which tasks (as the scripts' --job-name, "
    "--job-id, --task-type; none: every task); dry_run reports without changing anything",
    properties=dict(
        job_name=dict(type="string", minLength=1, maxLength=255),
        job_id=ID,
        task_types=dict(type="array", items=dict(type="string", minLength=1)),
        dry_run=dict(type="boolean"),
    ),
)

SCHEMAS = {
    "Error": dict(type="object", required=["error"], properties=dict(error=dict(type="string"))),
    "Chain": dict(
        type="object",
        required=["task_list"],
        description="a task chain, as in a job file (docs/task_chains.md)",
        properties=dict(
            job_name=dict(type="string"),
            working_directory=dict(type="string"),
            task_list=dict(type="array", items=dict(type="object")),
        ),
    ),
    "Submitted": _closed(
        job_id=ID,
        job_name=dict(type="string"),
        tasks=dict(type="integer"),
        worker_tasks=dict(type="integer"),
        task_ids=dict(type="array", items=ID),
        message=dict(type="string"),
    ),
    "Job": _closed(
        job_id=ID,
        name=dict(type="string"),
        source=_nullable("string"),
        submitted_at=dict(type="number"),
        tasks=dict(type="integer", minimum=0),
        counts=COUNTS,
        state=dict(type="string", enum=["active", "done", "failed", "cancelled"]),
    ),
    # A task as listed; GET /tasks/<id> adds its description, inherited metadata and metadata (optional).
    "Task": _open(
        _closed(
            task_id=ID,
            job_id=ID,
            parent_id=_nullable("integer"),
            job_name=dict(type="string"),
            name=_nullable("string"),
            task_type=dict(type="string"),
            chain_path=dict(type="string"),
            state=dict(type="string", enum=list(states.TASK_STATES)),
            is_control=dict(type="boolean"),
            priority=dict(type="integer"),
            attempts=dict(type="integer"),
            max_attempts=_nullable("integer"),
            working_directory=dict(type="string"),
            error=_nullable("string"),
            created_at=dict(type="number"),
            updated_at=dict(type="number"),
        ),
        description=dict(type="object"),
        inherited=dict(type="object"),
        metadata=dict(type="object"),
    ),
    "Attempt": _closed(
        attempt_id=ID,
        task_id=ID,
        number=dict(type="integer"),
        task_type=dict(type="string"),
        state=dict(type="string", enum=list(states.ATTEMPT_STATES)),
        queue=dict(type="string"),
        queued_at=dict(type="number"),
        started_at=_nullable("number"),
        ended_at=_nullable("number"),
        lease_expires_at=_nullable("number"),
        worker_name=_nullable("string"),
        host=_nullable("string"),
        pid=_nullable("integer"),
        exit_status=_nullable("integer"),
        wall_s=_nullable("number"),
        cpu_s=_nullable("number"),
        cpu_children_s=_nullable("number"),
        error=_nullable("string"),
    ),
    "LogLine": _closed(
        line_id=dict(type="integer"),
        attempt_id=ID,
        created_at=dict(type="number"),
        severity=dict(type="string"),
        stream=dict(type="string"),
        message=dict(type="string"),
    ),
    "Logs": dict(
        type="object",
        required=["items", "next_after"],
        additionalProperties=False,
        properties=dict(items=dict(type="array", items=_ref("LogLine")), next_after=dict(type="integer")),
    ),
    "ProductVersion": _closed(
        version_id=ID,
        attempt_id=ID,
        path=dict(type="string"),
        size=dict(type="integer"),
        md5=dict(type="string"),
        qc_state=dict(type="string"),
        qc_message=_nullable("string"),
        created_at=dict(type="number"),
    ),
    "Product": _closed(
        product_id=ID,
        semantic_type=dict(type="string"),
        relative_path=dict(type="string"),
        state=dict(type="string"),
        latest_version_id=_nullable("integer"),
        versions=dict(type="array", items=_ref("ProductVersion")),
    ),
    "Selection": SELECTION,
    "CancelSelection": dict(
        SELECTION,
        properties=dict(
            SELECTION["properties"],
            all=dict(type="boolean", description="cancel every unfinished task (needed when nothing else is named)"),
        ),
    ),
    "ActionReport": dict(
        type="object",
        required=["message", "report", "dry_run"],
        additionalProperties=False,
        properties=dict(message=dict(type="string"), dry_run=dict(type="boolean"), report=dict(type="object")),
    ),
}


def _parameter(name: str, where: str, schema: dict, description: str, required: bool = False) -> dict:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


PAGING = [
    _parameter("limit", "query", dict(type="integer", minimum=1, maximum=1000, default=100), "rows per page"),
    _parameter("offset", "query", dict(type="integer", minimum=0, maximum=1000000000, default=0), "rows skipped"),
]
ERRORS = {"default": _json(_ref("Error"), "an error, with the message the scripts print")}
WRITE_ERRORS = dict(
    ERRORS,
    **{
        "401": _json(_ref("Error"), "no token given"),
        "403": _json(_ref("Error"), "the token is not one of the settings' api_tokens"),
    },
)


def _task_path(suffix: str, summary: str, schema: dict, extra: list | None = None) -> dict:
    return {
        "get": dict(
            summary=summary,
            operationId="task_" + suffix,
            parameters=[_parameter("task_id", "path", ID, "task id")] + (extra or []),
            responses=dict({"200": _json(schema, summary)}, **ERRORS),
        )
    }


def _action(name: str, summary: str, selection: str = "Selection") -> dict:
    return {
        "post": dict(
            summary=summary,
            operationId=name,
            security=[{"bearerAuth": []}],
            requestBody={"required": True, "content": {"application/json": {"schema": _ref(selection)}}},
            responses=dict({"200": _json(_ref("ActionReport"), "what changed")}, **WRITE_ERRORS),
        )
    }


def document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "EAS Controller REST API",
            "version": __version__,
            "description": "Submit task chains, follow jobs and tasks, and act on them as the recovery "
            "scripts do. Reads are open; every write needs `Authorization: Bearer TOKEN` with a "
            "token from the settings file's `api_tokens`. See docs/rest_api.md.",
        },
        "servers": [{"url": "/"}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/jobs": {
                "get": dict(
                    summary="list jobs",
                    operationId="list_jobs",
                    parameters=[_parameter("name", "query", dict(type="string"), "only jobs of this name")] + PAGING,
                    responses=dict({"200": _json(_page("Job"), "a page of jobs")}, **ERRORS),
                ),
                "post": dict(
                    summary="submit a task chain (as submit.py)",
                    operationId="submit_chain",
                    security=[{"bearerAuth": []}],
                    parameters=[
                        _parameter(
                            "job_name", "query", dict(type="string", minLength=1), "override the chain's job_name"
                        )
                    ],
                    requestBody={"required": True, "content": {"application/json": {"schema": _ref("Chain")}}},
                    responses=dict({"201": _json(_ref("Submitted"), "the job was created")}, **WRITE_ERRORS),
                ),
            },
            "/api/jobs/{job_id}": {
                "get": dict(
                    summary="one job",
                    operationId="get_job",
                    parameters=[_parameter("job_id", "path", ID, "job id")],
                    responses=dict({"200": _json(_ref("Job"), "the job")}, **ERRORS),
                )
            },
            "/api/tasks": {
                "get": dict(
                    summary="list tasks",
                    operationId="list_tasks",
                    parameters=[
                        _parameter("job_id", "query", ID, "only this job's tasks"),
                        _parameter("job_name", "query", dict(type="string"), "only tasks of this job name"),
                        _parameter(
                            "state",
                            "query",
                            dict(type="string", enum=list(states.TASK_STATES)),
                            "only tasks in this state",
                        ),
                        _parameter("task_type", "query", dict(type="string"), "only tasks of this type"),
                        _parameter("parent_id", "query", ID, "only children of this task"),
                    ]
                    + PAGING,
                    responses=dict({"200": _json(_page("Task"), "a page of tasks")}, **ERRORS),
                )
            },
            "/api/tasks/{task_id}": _task_path("get", "one task, with its description and metadata", _ref("Task")),
            "/api/tasks/{task_id}/attempts": _task_path("attempts", "a task's attempts", _list("Attempt")),
            "/api/tasks/{task_id}/logs": _task_path(
                "logs",
                "a task's log lines",
                _ref("Logs"),
                [
                    _parameter("attempt_id", "query", ID, "only this attempt's lines"),
                    _parameter(
                        "after",
                        "query",
                        dict(type="integer", minimum=0, maximum=2**62, default=0),
                        "only lines after this line_id (pass next_after to follow a log)",
                    ),
                    _parameter(
                        "limit", "query", dict(type="integer", minimum=1, maximum=10000, default=1000), "lines at most"
                    ),
                ],
            ),
            "/api/tasks/{task_id}/products": _task_path(
                "products", "a task's file products and their versions", _list("Product")
            ),
            "/api/cancel": _action("cancel", "cancel unfinished tasks (as cancel_job.py)", "CancelSelection"),
            "/api/reschedule": _action(
                "reschedule", "retry failed and stalled tasks (as reschedule_all_unfinished_jobs.py)"
            ),
            "/api/hold": _action("hold", "take tasks out of the queue and hold them (as empty_queue.py --hold)"),
            "/api/release": _action("release", "release held tasks (as empty_queue.py --release)"),
        },
    }
