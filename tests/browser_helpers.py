"""Drive Debian's chromium with Playwright for Python (never a downloaded browser), and run the console.

Without chromium or Playwright the browser tests skip with the reason (fail under EAS_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from conftest import PROJECT_ROOT, unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_browser(playwright_context):
    return playwright_context.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def require_browser():
    """The sync_playwright factory, or skip/fail saying what is missing."""
    if not os.path.exists(CHROMIUM):
        unavailable("Debian's chromium is not installed at %s (.ci/run installs it with apt-get)" % CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        unavailable("Playwright for Python is not installed (%s)" % error)
    return sync_playwright


class Console:
    """The web console as a real process on a free port of 127.0.0.1."""

    def __init__(self, environment, *args: str):
        path = os.path.join(PROJECT_ROOT, "eas_controller", "web_interface", "web_interface.py")
        self.log_path = os.path.join(str(environment.tmp_path), "web-%d.log" % time.time_ns())
        self.log = open(self.log_path, "w+")
        self.process = subprocess.Popen([path, "--port", "0", *args], cwd=os.path.dirname(path), env=environment.env,
                                        stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            with open(self.log_path) as handle:
                found = re.search(r"web console on (http://[0-9.]+:\d+)/", handle.read())
            if found:
                self.url = found.group(1)
                break
            if self.process.poll() is not None or time.time() > deadline:
                with open(self.log_path) as handle:
                    raise AssertionError("the web console did not start:\n" + handle.read())
            time.sleep(0.1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
