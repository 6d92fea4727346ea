"""The web console in a real headless Chromium: every page loads with no console error and shows the right
counts; user strings are shown as text; downloads cannot leave the data directory; the activity chart of a
run with three workers; the run report opened with the network off. Screenshots are saved by the run."""

import http.client
import json
import os
import urllib.parse

import pytest

from browser_helpers import Console, launch_browser, require_browser
from conftest import make_environment

HOSTILE = "<script>alert(1)</script>"


def chain(flag_path: str) -> dict:
    return {"job_name": "console_demo", "working_directory": "console", "task_list": [
        {"task": "execution_for_loop", "parameter": "size", "values": [1, 2, 3, 4, 5, 6, 7, 8, 9], "task_list": [
            {"task": "sleep", "name": "nap", "seconds": 0.4}]},
        {"task": "write_text", "name": "writer", "text": "hello <b>world</b>", "outputs": {"text": "greeting.txt"}},
        {"task": "error", "name": "doomed", "message": "planned <failure> & more"},
        {"task": "shell", "name": "flaky",
         "command": "if [ -f %s ]; then echo again; else touch %s; exit 3; fi" % (flag_path, flag_path)},
    ]}


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    sync_playwright = require_browser()
    tmp_path = tmp_path_factory.mktemp("console")
    environment = make_environment("sqlite", tmp_path, max_attempts=2, retry_backoff_s=0)
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(chain(str(tmp_path / "flag"))))
    result = environment.script("job_submission/run_local.py", "--tasks", str(path), "--workers", "3", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps({"job_name": HOSTILE, "task_list": [{"task": "null", "name": HOSTILE}]}))
    environment.script("job_submission/submit.py", "--tasks", str(hostile))
    server = Console(environment)
    screens = tmp_path / "screenshots"
    screens.mkdir()
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield dict(environment=environment, url=server.url, browser=browser, screens=screens, tmp_path=tmp_path)
        browser.close()
    server.close()
    environment.engine.dispose()


def job_ids(console):
    rows = json.loads(console["environment"].script("diagnostics/display_job_tree.py", "--max-depth", "0",
                                                    "--format", "json").stdout)
    return {row["job_name"]: row["job_id"] for row in rows}


def visit(console, path, name):
    """Open a page; fail on any console error, page error or failed request; save a screenshot."""
    page = console["browser"].new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda message: problems.append("console %s: %s" % (message.type, message.text))
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append("page error: %s" % error))
    page.on("requestfailed", lambda request: problems.append("request failed: %s" % request.url))
    page.on("dialog", lambda dialog: (problems.append("dialog: %s" % dialog.message), dialog.dismiss()))
    response = page.goto(console["url"] + path)
    assert response.status == 200, (path, response.status)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(console["screens"] / ("%s.png" % name)), full_page=True)
    assert problems == [], (path, problems)
    return page


def test_every_page_loads_without_errors_and_shows_the_counts(console):
    ids = job_ids(console)
    job = ids["console_demo"]
    page = visit(console, "/", "jobs")
    row = page.locator("tr[data-job-id='%d']" % job)
    assert row.locator("td.total").inner_text() == "14"  # chain, loop, 9 naps, writer, doomed, flaky
    assert "done 12" in row.inner_text() and "failed 1" in row.inner_text() and "running 1" in row.inner_text()
    page.close()

    page = visit(console, "/job/%d/tree?depth=3" % job, "tree")
    root = page.locator("ul.tree > li.node").first
    assert root.get_attribute("data-state") == "running"
    assert root.locator("span.subtree").first.get_attribute("data-total") == "14"
    assert page.locator("li.node").count() == 14
    loop = page.locator("a.task", has_text="execution_for_loop").locator("xpath=ancestor::li[1]")
    assert "done 10" in loop.locator("span.subtree").first.inner_text()
    page.close()

    page = visit(console, "/job/%d/tree?depth=1" % job, "tree_depth1")
    assert page.locator("li.node").count() == 5  # the root and its four children
    page.close()

    page = visit(console, "/job/%d/progress" % job, "progress")
    sleep_row = page.locator("tr[data-task-type='sleep']")
    assert sleep_row.locator("td.col-done").inner_text() == "9"
    assert page.locator("tr[data-task-type='error'] td.col-failed").inner_text() == "1"
    assert page.locator("tr[data-task-type='(all)'] td.col-total").inner_text() == "12"
    assert page.locator("svg.progress polyline").count() == 2
    page.close()

    page = visit(console, "/job/%d/errors" % job, "errors")
    assert page.locator("section.failure").count() == 3  # doomed twice, flaky once
    assert page.locator("pre.error", has_text="planned <failure> & more").count() == 2
    page.close()

    page = visit(console, "/job/%d/timings" % job, "timings")
    cells = page.locator("table.data tbody tr").all_inner_texts()
    assert len(cells) == 3 and any(text.startswith("sleep\t9") for text in cells)
    page.close()

    page = visit(console, "/job/%d/passfail?task_type=sleep" % job, "passfail")
    assert page.locator("table.data tbody tr").count() == 9
    page.close()

    page = visit(console, "/job/%d/products" % job, "products")
    link = page.locator("a", has_text="console/greeting.txt")
    assert link.count() == 1
    page.close()

    writer = next(r for r in json.loads(console["environment"].script(
        "diagnostics/display_job_tree.py", "--job-name", "console_demo", "--format", "json").stdout)
        if r["task_name"] == "writer")
    page = visit(console, "/task/%d" % writer["task_id"], "task")
    assert page.locator("#explanation li.reason-done").count() == 1
    assert page.locator("#attempts tbody tr").count() == 1
    assert "wrote 18 characters" in page.locator("#log").inner_text()
    assert '"text": "hello <b>world</b>"' in page.locator("pre.json").first.inner_text()  # shown as text
    assert page.locator("pre.json b").count() == 0
    with page.expect_download() as download:
        page.locator("#products a").click()
    with open(download.value.path()) as handle:
        assert handle.read() == "hello <b>world</b>"
    page.close()

    page = visit(console, "/workers", "workers")
    assert page.locator("#workers tbody tr").count() == 3
    assert page.locator("#workers tbody tr.dead").count() == 3
    page.close()


def test_a_hostile_job_name_is_shown_as_text(console):
    ids = job_ids(console)
    page = visit(console, "/", "jobs_hostile")  # a dialog (alert) would be reported as a problem
    assert page.locator("td.jobname a", has_text=HOSTILE).inner_text() == HOSTILE
    assert page.locator("main script").count() == 0
    page.close()
    page = visit(console, "/job/%d/tree" % ids[HOSTILE], "tree_hostile")
    assert page.locator(".jobname b").inner_text() == HOSTILE
    assert page.locator("a.task i").inner_text() == HOSTILE
    page.close()


def test_a_download_cannot_leave_the_data_directory(console):
    page = console["browser"].new_page()
    for path in ("/download/..%2F..%2Fetc%2Fpasswd", "/download/%2e%2e/%2e%2e/etc/passwd",
                 "/download/console/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/download//etc/passwd"):
        response = page.request.get(console["url"] + path)
        assert response.status in (403, 404), (path, response.status)
        assert b"root:" not in response.body()
    page.close()
    # the literal path, as a client that does not normalise it sends it
    parts = urllib.parse.urlsplit(console["url"])
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", "/download/../../etc/passwd")
    response = connection.getresponse()
    body = response.read()
    assert response.status in (403, 404) and b"root:" not in body
    connection.close()
    link = os.path.join(console["environment"].settings.data_dir, "console", "escape")
    os.symlink("/etc", link)  # a symbolic link inside the data directory pointing out of it
    page = console["browser"].new_page()
    response = page.request.get(console["url"] + "/download/console/escape/passwd")
    assert response.status == 403 and b"root:" not in response.body()
    page.close()


def test_activity_chart_of_a_run_with_three_workers(console):
    job = job_ids(console)["console_demo"]
    page = visit(console, "/job/%d/activity" % job, "activity")
    chart = page.locator("#activity-chart svg.activity")
    assert chart.count() == 1
    assert chart.locator("text.lane").count() == 3
    bars = chart.locator("rect.attempt")
    assert bars.count() == 14  # 12 worker tasks, two of them with a second attempt
    box = chart.bounding_box()
    assert box["width"] > 500 and box["height"] > 60
    page.close()


def test_run_report_opens_offline(console):
    output = console["tmp_path"] / "report.html"
    console["environment"].script("diagnostics/run_report.py", "--job-name", "console_demo", "--output", str(output))
    context = console["browser"].new_context()
    context.set_offline(True)
    asked = []
    context.route("**/*", lambda route: (asked.append(route.request.url), route.abort())
                  if not route.request.url.startswith("file:") else route.continue_())
    page = context.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(output.as_uri())
    assert asked == [] and problems == []
    assert page.locator("h1").inner_text() == "Job %d: console_demo" % job_ids(console)["console_demo"]
    assert page.locator("svg.activity text.lane").count() == 3
    assert page.locator("svg.activity rect.attempt").count() == 14
    assert page.locator("section.failure").count() == 3
    assert page.locator("#grid-table tbody tr").count() == 12
    assert page.locator("#timings-table tbody tr").count() == 3
    colour = page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor")
    assert colour == "rgb(38, 50, 56)"  # the inline style sheet applied
    page.screenshot(path=str(console["screens"] / "report.png"), full_page=True)
    context.close()


def test_console_listens_on_loopback_unless_public(tmp_path):
    import subprocess
    import urllib.request

    from conftest import PROJECT_ROOT

    environment = make_environment("sqlite", tmp_path)
    private = Console(environment)
    try:
        assert private.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(private.url + "/") as response:
            assert response.status == 200 and b"No job has been submitted yet." in response.read()
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    finally:
        private.close()
    public = Console(environment, "--public")
    try:
        assert public.url.startswith("http://0.0.0.0:")
        port = public.url.rsplit(":", 1)[1]
        with urllib.request.urlopen("http://127.0.0.1:%s/workers" % port) as response:
            assert response.status == 200
    finally:
        public.close()
    script = os.path.join(PROJECT_ROOT, "eas_controller", "web_interface", "web_interface.py")
    both = subprocess.run([script, "--public", "--private"], env=environment.env, capture_output=True, text=True,
                          timeout=60)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    environment.engine.dispose()
