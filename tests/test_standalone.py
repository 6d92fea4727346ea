"""launch_standalone.py: every shipped task type runs from its input under demo_jobs/standalone/ with no
database, queue or server; chains (with a conditional) run too; bad input is one clear line."""

import json
import os
import subprocess

import pytest

from conftest import PROJECT_ROOT
from eas_controller.registry import read_registries

SCRIPT = os.path.join(PROJECT_ROOT, "eas_controller", "worker_orchestration", "launch_standalone.py")
STANDALONE = os.path.join(PROJECT_ROOT, "demo_jobs", "standalone")
EXPECTED_FAILURES = {"error.json": "this task always fails", "transit_search_qats.json": "not available here"}


def standalone(tmp_path, task_file: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the script as a user would, with a database URL that cannot be reached: none must be needed."""
    environment = dict(os.environ, EAS_DB_URL="mysql+pymysql://nobody@127.0.0.1:1/unreachable",
                       EAS_CONFIG=str(tmp_path / "no_settings.yaml"), PYTHONUNBUFFERED="1")
    environment.pop("EAS_DATA_DIR", None)
    return subprocess.run([SCRIPT, "--task", task_file, "--data-dir", str(tmp_path / "data"), *args],
                          cwd=os.path.dirname(SCRIPT), env=environment, capture_output=True, text=True, timeout=timeout)


def run_json(tmp_path, task_file: str, expect_rc: int = 0) -> dict:
    """The JSON report, keeping the worker tasks (a failed control task is listed too, with its reason)."""
    result = standalone(tmp_path, task_file, "--format", "json")
    assert result.returncode == expect_rc, result.stdout + result.stderr
    report = json.loads(result.stdout)
    report["tasks"] = [task for task in report["tasks"] if not task["task_type"].startswith("execution_")]
    return report


def by_name(report: dict) -> dict:
    return {task["task_name"] or task["task_type"]: task for task in report["tasks"]}


def test_every_shipped_task_type_has_a_standalone_input():
    shipped = set(read_registries([]))
    used = set()
    for name in os.listdir(STANDALONE):
        if name.endswith(".json"):
            with open(os.path.join(STANDALONE, name)) as handle:
                used.add(json.load(handle).get("task"))
    assert shipped - {None} <= {name[:-5] for name in os.listdir(STANDALONE)}, sorted(shipped - used)


@pytest.mark.parametrize("name", sorted(name for name in os.listdir(STANDALONE) if name.endswith(".json")))
def test_standalone_input_runs(tmp_path, name):
    expected_error = EXPECTED_FAILURES.get(name)
    report = run_json(tmp_path, os.path.join(STANDALONE, name), expect_rc=1 if expected_error else 0)
    states = {task["state"] for task in report["tasks"]}
    if expected_error:
        assert states == {"failed"} and expected_error in report["tasks"][0]["error"]
        return
    assert states == {"succeeded"}, report
    for task in report["tasks"]:
        for path in task["outputs"].values():
            assert os.path.isfile(path) and path.startswith(str(tmp_path / "data"))


def test_chain_with_conditional_runs_the_branch_its_search_chose(tmp_path):
    tasks = by_name(run_json(tmp_path, os.path.join(STANDALONE, "detection_chain.json")))
    assert tasks["transit_detection"]["metadata"]["outcome"] == "PASS"
    assert tasks["lightcurve_verification"]["metadata"]["verification"] is True
    confirmation = tasks["confirmation"]["metadata"]
    assert confirmation["outcome"] == "PASS" and abs(confirmation["period"] - 2.5) < 0.025
    assert "no_detection" not in tasks
    assert os.path.isfile(tmp_path / "data" / "detection_chain" / "lc.gz")


def test_seed_cfg_test_file(tmp_path):
    config = tmp_path / "test_verify.cfg"
    config.write_text("[task]\ntask = verify\njob_name = testing\n\n[inputs]\nlightcurve = %s\n"
                      % os.path.join(STANDALONE, "inputs", "superearth_10min.gz"))
    report = run_json(tmp_path, str(config))
    metadata = report["tasks"][0]["metadata"]
    assert metadata["verification"] is True
    assert metadata["verification_time_min"] == 0 and abs(metadata["verification_time_max"] - 10) < 0.01


def test_table_output_names_products(tmp_path):
    result = standalone(tmp_path, os.path.join(STANDALONE, "binning.json"))
    assert result.returncode == 0, result.stderr
    assert "succeeded binning" in result.stdout and "lightcurve -> superearth_30min.gz" in result.stdout


def test_bad_input_is_one_clear_line(tmp_path):
    missing = standalone(tmp_path, str(tmp_path / "nothing.json"))
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"task": "no_such_type"}))
    result = standalone(tmp_path, str(unknown))
    assert result.returncode == 2 and "no_such_type" in result.stderr and "Traceback" not in result.stderr
    absent_input = tmp_path / "absent.json"
    absent_input.write_text(json.dumps({"task": "verify", "inputs": {"lightcurve": "not_here.gz"}}))
    report = run_json(tmp_path, str(absent_input), expect_rc=1)
    assert "not_here.gz" in report["tasks"][0]["error"]
