"""bench/chaos.py runs at a tiny size and reports well-formed, honest figures, so it cannot rot.

No timing is asserted: only the structure of the report and the integrity checks (nothing lost, nothing
done twice, every product's md5 right). It starts its own private MariaDB server; the shared one is never
touched. Retries and a short lease are given explicitly so that a killed worker's task runs again soon.
"""

import json
import os
import shutil
import subprocess

from conftest import PROJECT_ROOT, unavailable

from bench.chaos import build_chain
from bench.chaos_report import FAULT_KINDS

KEYS = {"tasks", "faults", "faults_total", "reruns", "work_rerun_s", "work_rerun_per_fault_s", "time_to_finish_s",
        "lost_tasks", "succeeded_twice", "products", "problems", "settings", "attempt_states", "date"}


def test_chaos_quick_run_kills_a_worker_and_loses_nothing(tmp_path):
    if not (shutil.which("mariadb-install-db") and shutil.which("mariadbd", path="/usr/sbin:/usr/bin")):
        unavailable("MariaDB server binaries (mariadb-install-db, mariadbd) are not installed")
    output = tmp_path / "chaos.json"
    completed = subprocess.run(
        [os.path.join(PROJECT_ROOT, "bench", "chaos.py"), "--quick", "--tasks", "30", "--lease-seconds", "4",
         "--max-attempts", "3", "--retry-backoff", "0.5", "--quiet", "--output", str(output)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(output.read_text())
    assert KEYS <= set(report), sorted(KEYS - set(report))
    assert set(report["faults"]) == set(FAULT_KINDS)
    assert report["faults"]["worker_kill"] == 1 and report["faults"]["db_kill"] == 0
    assert report["tasks"] == 30 and report["task_states"] == {"done": 30}
    assert report["lost_tasks"] == 0 and report["succeeded_twice"] == 0 and report["problems"] == []
    assert report["attempt_states"]["succeeded"] == 30
    assert report["products"]["checked"] == 30 and report["products"]["md5_ok"] == 30
    assert report["settings"]["lease_seconds"] == 4 and report["settings"]["max_attempts"] == 3
    assert "lost tasks (not done)" in completed.stdout and "OK" in completed.stdout


def test_chain_has_the_size_asked_and_file_dependencies():
    import random

    for count in (1, 3, 4, 30, 31, 100):
        chain = build_chain(count, random.Random(3), (0.1, 0.2), 10)
        assert len(chain["task_list"]) == count
        made = set()
        for task in chain["task_list"]:
            assert set(task["inputs"].values()) <= made  # every input made by an earlier task
            made.update(task["outputs"].values())
    joins = [task for task in build_chain(31, random.Random(3), (0.1, 0.2), 10)["task_list"] if "join" in task["name"]]
    assert len(joins) == 1 and len(joins[0]["inputs"]) == 10
