"""run_local.py end to end on every SQL back end: the demo pipeline finishes and its products are right."""

import csv
import json
import os

from conftest import PROJECT_ROOT


def test_hello_pipeline_runs_to_success(eas):
    result = eas.script("job_submission/run_local.py", "--tasks", os.path.join(PROJECT_ROOT, "demo_jobs", "hello_pipeline.json"),
                        "--workers", "2", "--timeout", "120")
    assert "succeeded" in result.stdout
    tree = json.loads(eas.script("diagnostics/display_job_tree.py", "--format", "json").stdout)
    leaves = [row for row in tree if row["task_type"] not in ("execution_chain", "execution_for_loop")]
    assert len(leaves) == 8 and {row["state"] for row in tree} == {"done"}
    assert all(row["attempts"] == 1 for row in leaves)
    measured = sorted(row["metadata"]["depth_ppm"] for row in tree if row["task_type"] == "measure_transit_depth")
    assert [round(value) for value in measured] == [336, 2098, 10566]  # (R_planet / R_sun)**2 in the seed's constants
    with open(os.path.join(eas.settings.data_dir, "hello_pipeline", "summary.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["input"] for row in rows) == ["large", "medium", "small"]


def test_run_local_exits_nonzero_when_a_task_fails(eas_sqlite, tmp_path):
    chain = tmp_path / "failing.json"
    chain.write_text(json.dumps({"task_list": [{"task": "null"}, {"task": "error", "message": "planned failure"}]}))
    result = eas_sqlite.script("job_submission/run_local.py", "--tasks", str(chain), "--workers", "1", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "planned failure" in result.stdout
