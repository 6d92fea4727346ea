"""The REST API: each endpoint, token authentication on every write, JSON errors, and a fuzzing pass
(schemathesis) holding the server to its own OpenAPI document."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import schemathesis
from conftest import PROJECT_ROOT
from hypothesis import HealthCheck, settings

from eas_controller import states
from eas_controller.web_interface.api import create_api_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
JSON = "application/json"
CHAIN = {
    "job_name": "rest",
    "task_list": [
        {"task": "write_text", "name": "make", "text": "hello", "outputs": {"text": "made.txt"}},
        {"task": "null", "name": "after"},
    ],
}


@pytest.fixture
def client(eas_sqlite):
    eas_sqlite.settings.api_tokens = [TOKEN, "another-token"]
    app = create_api_app(eas_sqlite.settings)
    app.testing = True
    return app.test_client()


def test_openapi_document_is_served_and_valid(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.") and "/api/tasks/{task_id}/logs" in document["paths"]
    writes = [
        (path, method)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method == "post"
    ]
    assert len(writes) == 5 and all("security" in document["paths"][path][method] for path, method in writes)


def test_every_write_needs_a_token(client):
    writes = [
        ("/api/jobs", CHAIN),
        ("/api/cancel", {"all": True}),
        ("/api/reschedule", {}),
        ("/api/hold", {}),
        ("/api/release", {}),
    ]
    for path, body in writes:
        missing = client.post(path, json=body)
        assert missing.status_code == 401 and "Bearer" in missing.get_json()["error"], path
        wrong = client.post(path, json=body, headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 403 and "not accepted" in wrong.get_json()["error"], path
        basic = client.post(path, json=body, headers={"Authorization": "Basic " + TOKEN})
        assert basic.status_code == 401, path
    assert client.get("/api/jobs").get_json()["total"] == 0  # nothing was written
    for path, body in writes:
        assert client.post(path, json=body, headers=AUTH).status_code in (200, 201), path


def test_no_tokens_configured_refuses_every_write(eas_sqlite):
    eas_sqlite.settings.api_tokens = []
    client = create_api_app(eas_sqlite.settings).test_client()
    assert client.post("/api/jobs", json=CHAIN, headers=AUTH).status_code == 403


def test_submit_list_and_read_a_finished_job(client, eas_sqlite):
    response = client.post("/api/jobs", json=CHAIN, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    submitted = response.get_json()
    assert submitted["message"].startswith(
        "submitted job %d (rest): 3 tasks (2 to run on workers" % submitted["job_id"]
    )
    job_id = submitted["job_id"]
    # run it with a real worker process
    from eas_controller.api.jobs import Job

    worker = eas_sqlite.start_worker("--concurrency", "1", "--poll-interval", "0.1")
    try:
        Job(job_id, "rest", eas_sqlite.settings).wait(timeout=120)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    jobs = client.get("/api/jobs?name=rest").get_json()
    assert jobs["total"] == 1 and jobs["items"][0]["state"] == "done" and jobs["items"][0]["counts"] == {"done": 3}
    assert client.get("/api/jobs/%d" % job_id).get_json()["tasks"] == 3
    assert client.get("/api/jobs?name=other").get_json()["total"] == 0

    tasks = client.get("/api/tasks?job_id=%d&limit=2" % job_id).get_json()
    assert tasks["total"] == 3 and len(tasks["items"]) == 2 and tasks["limit"] == 2
    second_page = client.get("/api/tasks?job_id=%d&limit=2&offset=2" % job_id).get_json()
    assert len(second_page["items"]) == 1
    make = client.get("/api/tasks?job_name=rest&task_type=write_text&state=done").get_json()["items"]
    assert [task["name"] for task in make] == ["make"]
    task_id = make[0]["task_id"]
    detail = client.get("/api/tasks/%d" % task_id).get_json()
    assert detail["description"]["text"] == "hello" and detail["state"] == "done"

    attempts = client.get("/api/tasks/%d/attempts" % task_id).get_json()
    assert attempts["total"] == 1 and attempts["items"][0]["state"] == states.A_SUCCEEDED
    logs = client.get("/api/tasks/%d/logs" % task_id).get_json()
    assert "wrote 5 characters" in [line["message"] for line in logs["items"]]
    assert client.get("/api/tasks/%d/logs?after=%d" % (task_id, logs["next_after"])).get_json()["items"] == []
    products = client.get("/api/tasks/%d/products" % task_id).get_json()["items"]
    assert products[0]["relative_path"] == "made.txt" and products[0]["state"] == "made"
    assert products[0]["versions"][0]["size"] == 5


def test_actions_change_state_and_say_what_they_did(client):
    job_id = client.post("/api/jobs", json=CHAIN, headers=AUTH).get_json()["job_id"]
    held = client.post("/api/hold", json={"job_id": job_id}, headers=AUTH).get_json()
    assert "held 2 ready or waiting task(s)" in held["message"]
    states_now = {
        task["state"]
        for task in client.get("/api/tasks?job_id=%d" % job_id).get_json()["items"]
        if not task["is_control"]
    }
    assert states_now == {"held"}
    released = client.post("/api/release", json={"job_name": "rest"}, headers=AUTH).get_json()
    assert released["message"] == "released 2 held task(s) of job 'rest'"
    dry = client.post("/api/cancel", json={"job_id": job_id, "dry_run": True}, headers=AUTH).get_json()
    assert dry["message"].startswith("dry run: would have cancelled 3 unfinished task(s)")
    cancelled = client.post("/api/cancel", json={"job_id": job_id}, headers=AUTH).get_json()
    assert cancelled["report"]["tasks"] == 3 and not cancelled["dry_run"]
    assert client.get("/api/jobs/%d" % job_id).get_json()["state"] == "cancelled"
    rescheduled = client.post("/api/reschedule", json={"job_id": job_id}, headers=AUTH).get_json()
    assert "made ready 0 failed task(s)" in rescheduled["message"]


def _nested(levels):
    value = []
    for _ in range(levels):
        value = [value]
    return value


def test_bad_input_is_a_clear_4xx(client):
    cases = [
        (
            client.post("/api/jobs", json={"task_list": [{"task": "no_such_type"}]}, headers=AUTH),
            400,
            "unknown task type 'no_such_type'",
        ),
        (
            client.post(
                "/api/jobs", json={"task_list": [{"task": "null", "inputs": {"x": "nowhere.txt"}}]}, headers=AUTH
            ),
            400,
            "no task produces file 'nowhere.txt'",
        ),
        (client.post("/api/jobs", json=[1, 2], headers=AUTH), 400, "task chain"),
        (
            client.post("/api/jobs", data="{not json", headers=dict(AUTH, **{"Content-Type": "application/json"})),
            400,
            "not valid JSON",
        ),
        (client.post("/api/jobs", data="x", headers=AUTH), 415, "must be JSON"),
        (client.post("/api/cancel", json={}, headers=AUTH), 400, "name what to cancel"),
        (client.post("/api/cancel", json={"task_types": ["nope"]}, headers=AUTH), 400, "unknown task type(s) ['nope']"),
        (client.post("/api/hold", json={"job_id": "7"}, headers=AUTH), 400, "field 'job_id'"),
        (client.post("/api/hold", json={"jobname": "x"}, headers=AUTH), 400, "unknown field(s) ['jobname']"),
        (client.get("/api/tasks?state=sleeping"), 400, "query parameter 'state'"),
        (client.get("/api/tasks?limit=0"), 400, "query parameter 'limit'"),
        (client.get("/api/jobs?offset=abc"), 400, "whole number"),
        (client.get("/api/tasks/99"), 404, "no task 99"),
        (client.get("/api/tasks/99999999999999999999/logs"), 404, "no task"),
        (client.get("/api/jobs/12"), 404, "no job 12"),
        (client.get("/api/nothing-here"), 404, ""),
        (client.get("/api/jobs?name=a%00b"), 400, "NUL character"),
        (client.post("/api/jobs", json={"task_list": [{"task": "null", "name": "a\x00"}]}, headers=AUTH), 400, "NUL"),
        (
            client.post("/api/jobs", data="[" * 100000 + "]" * 100000, headers=dict(AUTH, **{"Content-Type": JSON})),
            400,
            "nested too deeply",
        ),
        (
            client.post("/api/jobs", json={"task_list": [{"task": "null", "deep": _nested(130)}]}, headers=AUTH),
            400,
            "nested more than 128 levels deep",
        ),
        (client.delete("/api/jobs"), 405, ""),
    ]
    for response, status, message in cases:
        body = response.get_json()
        assert response.status_code == status and message in body["error"], (status, body)


def test_rest_api_script_serves_over_http(eas_sqlite):
    with open(eas_sqlite.settings.settings_path, "w") as handle:
        handle.write("api_tokens: [%s]\n" % TOKEN)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = os.path.join(PROJECT_ROOT, "eas_controller", "web_interface", "rest_api.py")
    server = subprocess.Popen(
        [path, "--port", str(port)],
        cwd=os.path.dirname(path),
        env=eas_sqlite.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = "http://127.0.0.1:%d/api" % port
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/jobs", timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(
            url + "/jobs",
            data=json.dumps(CHAIN).encode(),
            method="POST",
            headers=dict(AUTH, **{"Content-Type": "application/json"}),
        )
        assert json.load(urllib.request.urlopen(request, timeout=10))["job_name"] == "rest"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(
                    url + "/jobs", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
                ),
                timeout=10,
            )
        assert refused.value.code == 401
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture
def api_schema(eas_sqlite):
    eas_sqlite.settings.api_tokens = [TOKEN]
    app = create_api_app(eas_sqlite.settings)
    client = app.test_client()
    client.post("/api/jobs", json=CHAIN, headers=AUTH)  # something to read
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzing_against_the_openapi_document(case):
    """Every default check but one: schema-valid input may still be refused with 400 when it fails a check the
    schema cannot express (a task type that is not registered, an input file nobody produces...), as the
    scripts refuse it."""
    from schemathesis.checks import positive_data_acceptance

    case.call_and_validate(
        headers=AUTH if case.method.upper() == "POST" else None, excluded_checks=[positive_data_acceptance]
    )
