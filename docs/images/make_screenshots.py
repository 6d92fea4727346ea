#!/usr/bin/env python3
"""Regenerates the console screenshots of docs/diagnostics.md (docs/images/*.png).

Runs the demo pipeline plus a small sweep with a failure and a retry on a throw-away SQLite database with
three local workers, starts the console on it, and photographs each page with Debian's chromium driven by
Playwright. Run from anywhere: ./docs/images/make_screenshots.py
"""

import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from eas_controller.launch import use_project_environment  # noqa: E402

use_project_environment()

PAGES = [("jobs", "/"), ("tree", "/job/2/tree?depth=3"), ("task", "/task/{task}"), ("progress", "/job/2/progress"),
         ("activity", "/job/2/activity"), ("timings", "/job/2/timings"), ("passfail", "/job/2/passfail?task_type=emit_metadata"),
         ("errors", "/job/2/errors"), ("products", "/job/1/products"), ("workers", "/workers")]
CHAIN = {"job_name": "grid_demo", "task_list": [
    {"task": "execution_for_loop", "parameter": "size", "values": [1, 2, 3, 4, 5, 6], "task_list": [
        {"task": "sleep", "name": "work", "seconds": "(0.2 * metadata['size'])"},
        {"task": "emit_metadata", "name": "grade", "requires_metadata_from": ["work"],
         "values": {"outcome": "('PASS' if metadata['size'] < 5 else 'FAIL')"}}]},
    {"task": "error", "name": "doomed", "message": "planned failure"},
    {"task": "shell", "name": "flaky", "command": "if [ -f {flag} ]; then echo second try; else touch {flag}; "
                                                  "echo first try fails >&2; exit 3; fi"}]}


def main() -> int:
    from playwright.sync_api import sync_playwright

    work = tempfile.mkdtemp(prefix="eas_screens_")
    env = dict(os.environ, EAS_DATA_DIR=work, EAS_CONFIG=os.path.join(work, "settings.yaml"), EAS_MAX_ATTEMPTS="2",
               EAS_RETRY_BACKOFF_SECONDS="0")
    for name in ("EAS_DB_URL", "EAS_QUEUE"):
        env.pop(name, None)
    scripts = os.path.join(ROOT, "eas_controller")
    subprocess.run([os.path.join(scripts, "database_initialisation", "init_schema.py"), "--task-types",
                    os.path.join(ROOT, "tests", "task_types_test.yaml")], env=env, check=True, capture_output=True)
    subprocess.run([os.path.join(scripts, "job_submission", "run_local.py"), "--tasks",
                    os.path.join(ROOT, "demo_jobs", "hello_pipeline.json"), "--workers", "3"], env=env, check=True,
                   capture_output=True)
    chain_path = os.path.join(work, "grid.json")
    with open(chain_path, "w") as handle:
        handle.write(json.dumps(CHAIN).replace("{flag}", os.path.join(work, "flag")))
    subprocess.run([os.path.join(scripts, "job_submission", "run_local.py"), "--tasks", chain_path, "--workers", "3"],
                   env=env, capture_output=True)
    server = subprocess.Popen([os.path.join(scripts, "web_interface", "web_interface.py"), "--port", "0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = re.search(r"(http://[0-9.]+:\d+)/", server.stdout.readline()).group(1)
        tree = json.loads(subprocess.run([os.path.join(scripts, "diagnostics", "display_job_tree.py"), "--job-id", "2",
                                          "--format", "json"], env=env, check=True, capture_output=True).stdout)
        flaky = next(row["task_id"] for row in tree if row["task_name"] == "flaky")
        report = os.path.join(work, "report.html")
        subprocess.run([os.path.join(scripts, "diagnostics", "run_report.py"), "--job-id", "2", "--output", report],
                       env=env, check=True, capture_output=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            for name, path in PAGES:
                page.goto(url + path.format(task=flaky))
                page.wait_for_load_state("networkidle")
                page.screenshot(path=os.path.join(HERE, "console_%s.png" % name), full_page=False)
            page.goto("file://" + report)
            page.screenshot(path=os.path.join(HERE, "run_report.png"), full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
    print("screenshots written to %s" % HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
