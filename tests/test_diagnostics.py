"""The diagnostic scripts on a finished pipeline with known failures and a retried task, on SQLite and
MariaDB: each script's JSON (counts asserted), CSV and table output, and the seed's flags."""

import csv
import io
import json
import subprocess

import pytest

from conftest import make_environment

#: Three graded grid points (sizes 1 and 2 pass, 3 fails), a task that fails both its attempts, and a
#: task whose first attempt fails and second succeeds.
def chain(flag_path: str) -> dict:
    return {"job_name": "diag_demo", "task_list": [
        {"task": "execution_for_loop", "parameter": "size", "values": [1, 2, 3], "task_list": [
            {"task": "emit_metadata", "name": "grade",
             "values": {"outcome": "('PASS' if metadata['size'] < 3 else 'FAIL')", "score": "(metadata['size'] * 10)"}}]},
        {"task": "error", "name": "doomed", "message": "planned failure"},
        {"task": "shell", "name": "flaky",
         "command": "if [ -f %s ]; then echo second try; else touch %s; echo first try fails >&2; exit 3; fi" % (
             flag_path, flag_path)},
    ]}


@pytest.fixture(scope="module", params=["sqlite", "mysql"])
def finished(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("diag_" + request.param)
    environment = make_environment(request.param, tmp_path, max_attempts=2, retry_backoff_s=0)
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(chain(str(tmp_path / "flaky.flag"))))
    result = environment.script("job_submission/run_local.py", "--tasks", str(path), "--workers", "2", "--timeout", "120",
                                check=False)
    assert result.returncode == 1, result.stdout + result.stderr  # one task failed, as planned
    yield environment
    environment.engine.dispose()


def run_json(environment, script, *args):
    return json.loads(environment.script("diagnostics/" + script, *args, "--format", "json").stdout)


def test_display_job_tree_json_and_seed_flags(finished):
    tree = run_json(finished, "display_job_tree.py", "--job-name", "diag_demo")
    by_name = {}
    for row in tree:
        by_name.setdefault(row["task_name"] or row["task_type"], []).append(row)
        assert {"task_id", "parent_id", "job_name", "task_name", "task_type", "state", "attempts", "metadata"} <= set(row)
    assert len(tree) == 7
    root = by_name["execution_chain"][0]
    assert root["subtree_counts"] == {"running": 1, "done": 5, "failed": 1}
    assert by_name["execution_for_loop"][0]["subtree_counts"] == {"done": 4}
    assert by_name["doomed"][0]["state"] == "failed" and by_name["doomed"][0]["attempts"] == 2
    assert by_name["flaky"][0]["state"] == "done" and by_name["flaky"][0]["attempts"] == 2
    assert sorted(row["metadata"]["outcome"] for row in by_name["grade"]) == ["FAIL", "PASS", "PASS"]
    # --max-depth: 0 is the root alone, 1 adds the loop and the two plain tasks
    assert [row["task_type"] for row in run_json(finished, "display_job_tree.py", "--max-depth", "0")] == ["execution_chain"]
    assert len(run_json(finished, "display_job_tree.py", "--max-depth", "1")) == 4
    # --show-running-only 1: the root chain still counts as running (one child failed)
    running = run_json(finished, "display_job_tree.py", "--show-running-only", "1")
    assert [row["task_type"] for row in running] == ["execution_chain"]
    assert len(run_json(finished, "display_job_tree.py", "--show-running-only", "0")) == 7
    # --status (the seed's older flag)
    assert len(run_json(finished, "display_job_tree.py", "--status", "done")) == 5
    assert run_json(finished, "display_job_tree.py", "--status", "waiting") == []
    assert [r["task_name"] for r in run_json(finished, "display_job_tree.py", "--status", "failed")] == ["doomed"]
    assert run_json(finished, "display_job_tree.py", "--status", "stalled") == []
    table = finished.script("diagnostics/display_job_tree.py", "--job-name", "diag_demo").stdout
    assert "running 1, done 5, failed 1" in table and "planned failure" in table


def test_progress_summary_json_csv_and_watch(finished):
    rows = {row["task_type"]: row for row in run_json(finished, "progress_summary.py", "--job-name", "diag_demo")}
    assert set(rows) == {"emit_metadata", "error", "shell", "(all)"}
    assert rows["emit_metadata"]["done"] == 3 and rows["emit_metadata"]["percent_done"] == 100.0
    assert rows["error"]["failed"] == 1 and rows["error"]["total"] == 1 and rows["error"]["percent_done"] == 0.0
    assert rows["(all)"]["done"] == 4 and rows["(all)"]["failed"] == 1 and rows["(all)"]["total"] == 5
    with_control = {r["task_type"]: r for r in run_json(finished, "progress_summary.py", "--include-control")}
    assert with_control["execution_chain"]["running"] == 1 and with_control["(all)"]["total"] == 7
    parsed = list(csv.DictReader(io.StringIO(finished.script("diagnostics/progress_summary.py", "--format", "csv").stdout)))
    assert [r["task_type"] for r in parsed] == ["emit_metadata", "error", "shell", "(all)"]
    watched = finished.script("diagnostics/progress_summary.py", "--watch", "--interval", "0.2", "--count", "2").stdout
    assert watched.count("5 of 5 finished (100.0%)") == 2 and "[" + "#" * 30 + "]" in watched


def test_errors_list_json_verbose_and_since(finished):
    rows = run_json(finished, "errors_list.py", "--job-name", "diag_demo")
    assert len(rows) == 3  # doomed twice, flaky once
    assert sorted((r["task_name"], r["attempt"]) for r in rows) == [("doomed", 1), ("doomed", 2), ("flaky", 1)]
    assert all(r["state"] == "failed" and r["worker"].startswith("local-") and r["host"] for r in rows)
    assert {r["error"] for r in rows if r["task_name"] == "doomed"} == {"planned failure"}
    assert [r["task_name"] for r in run_json(finished, "errors_list.py", "--task-type", "shell")] == ["flaky"]
    verbose = run_json(finished, "errors_list.py", "--task-type", "shell", "--verbose")
    assert any("first try fails" in line for line in verbose[0]["log"])
    assert len(run_json(finished, "errors_list.py", "--since", "1d")) == 3
    assert run_json(finished, "errors_list.py", "--since", "2000-01-01") != []
    assert run_json(finished, "errors_list.py", "--since", "2999-01-01 00:00") == []
    bad = finished.script("diagnostics/errors_list.py", "--since", "yesterday-ish", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --since") and "Traceback" not in bad.stderr


def test_timings_list_and_to_csv(finished):
    rows = {r["task_type"]: r for r in run_json(finished, "timings_list.py", "--job-name", "diag_demo")}
    assert set(rows) == {"emit_metadata", "shell"}  # the failing type never succeeded
    assert rows["emit_metadata"]["count"] == 3 and rows["shell"]["count"] == 1
    assert rows["emit_metadata"]["wall_s_max"] >= rows["emit_metadata"]["wall_s_median"] >= 0
    by = run_json(finished, "timings_list.py", "--task-type", "emit_metadata", "--by", "size")
    assert [(r["size"], r["count"]) for r in by] == [(1, 1), (2, 1), (3, 1)]
    text = finished.script("diagnostics/timings_to_csv.py", "--job-name", "diag_demo", "--task-type", "emit_metadata").stdout
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 1 and parsed[0]["count"] == "3" and "cpu_children_s_median" in parsed[0]


def test_pass_fail_to_csv(finished):
    text = finished.script("diagnostics/pass_fail_to_csv.py", "--job-name", "diag_demo", "--task-type", "emit_metadata").stdout
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == ["task_id", "task_type", "state", "size", "outcome", "score"]
    assert [(r["size"], r["outcome"], r["score"]) for r in parsed] == [("1", "PASS", "10"), ("2", "PASS", "20"),
                                                                       ("3", "FAIL", "30")]
    rows = run_json(finished, "pass_fail_to_csv.py", "--task-type", "emit_metadata")
    assert sum(r["outcome"] == "PASS" for r in rows) == 2


def test_worker_list(finished):
    rows = run_json(finished, "worker_list.py")
    # run_local.py starts two workers; one may be stopped before it registers when the job is quick
    assert len(rows) in (1, 2) and {r["state"] for r in rows} == {"stopped"} and not any(r["live"] for r in rows)
    assert all(r["name"].startswith("local-") and r["pid"] > 0 for r in rows)
    assert all("emit_metadata" in r["capabilities"] and r["current_attempts"] == [] for r in rows)
    assert run_json(finished, "worker_list.py", "--live-only") == []


def test_explain_task_on_the_finished_job(finished):
    tree = {row["task_name"]: row for row in run_json(finished, "display_job_tree.py") if row["task_name"]}
    doomed = run_json(finished, "explain_task.py", str(tree["doomed"]["task_id"]))
    assert doomed["codes"][0] == "failed_final" and doomed["attempt_count"] == 2 and doomed["max_attempts"] == 2
    assert [a["state"] for a in doomed["attempts"]] == ["failed", "failed"]
    flaky = run_json(finished, "explain_task.py", str(tree["flaky"]["task_id"]))
    assert flaky["codes"][0] == "done" and "attempt_failed" in flaky["codes"]
    text = finished.script("diagnostics/explain_task.py", str(tree["doomed"]["task_id"])).stdout
    assert "failed after its last attempt (2 of at most 2): planned failure" in text


def test_db_shell_opens_the_database_without_showing_a_password(finished):
    printed = finished.script("diagnostics/db_shell.py", "--print-command").stdout
    if finished.backend == "sqlite":
        assert printed.startswith("sqlite3 ")
        out = finished.script("diagnostics/db_shell.py", "--", "-batch", input="SELECT COUNT(*) FROM eas_tasks;\n").stdout
    else:
        assert printed.split()[0] in ("mariadb", "mysql") and "-p" not in printed.split()
        out = finished.script("diagnostics/db_shell.py", "--", "-N", "-e", "SELECT COUNT(*) FROM eas_tasks").stdout
    assert out.strip() == "7"


def test_db_shell_never_prints_the_password(tmp_path):
    env = make_environment("sqlite", tmp_path)
    from eas_controller.commands.db_shell import client_command

    command, extra = client_command("mysql+pymysql://someone:s3cret-pw@db.example:3307/eas")
    assert "s3cret-pw" not in " ".join(command) and extra == {"MYSQL_PWD": "s3cret-pw"}
    command, extra = client_command("postgresql+psycopg://someone:s3cret-pw@db.example/eas")
    assert "s3cret-pw" not in " ".join(command) and extra == {"PGPASSWORD": "s3cret-pw"}
    out = env.script("diagnostics/db_shell.py", "--print-command", "--db-url",
                     "mysql+pymysql://someone:s3cret-pw@127.0.0.1:3307/eas")
    assert "s3cret-pw" not in out.stdout + out.stderr
    env.engine.dispose()


def test_unknown_job_or_task_is_one_clear_line(finished):
    for script, args in (("progress_summary.py", ["--job-name", "nope"]),
                         ("errors_list.py", ["--job-name", "nope"]), ("timings_list.py", ["--job-name", "nope"]),
                         ("pass_fail_to_csv.py", ["--job-name", "nope"]), ("explain_task.py", ["999999"]),
                         ("run_report.py", ["--job-name", "nope", "--output", "/tmp/never.html"])):
        result = finished.script("diagnostics/" + script, *args, check=False)
        assert result.returncode == 2, (script, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (script, result.stderr)
    # the tree of an unknown job is empty, not an error (its JSON contract since the first release)
    tree = finished.script("diagnostics/display_job_tree.py", "--job-name", "nope", "--format", "json")
    assert tree.returncode == 0 and json.loads(tree.stdout) == []


@pytest.mark.parametrize("script", ["display_job_tree.py", "progress_summary.py", "errors_list.py", "timings_list.py",
                                    "timings_to_csv.py", "pass_fail_to_csv.py", "worker_list.py", "explain_task.py",
                                    "db_shell.py", "run_report.py", "display_message_queue.py"])
def test_every_script_has_help(script):
    from conftest import PROJECT_ROOT
    import os

    path = os.path.join(PROJECT_ROOT, "eas_controller", "diagnostics", script)
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60, cwd=os.path.dirname(path))
    assert result.returncode == 0 and "usage:" in result.stdout
