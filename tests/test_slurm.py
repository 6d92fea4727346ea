"""Workers on a real single-node Slurm cluster (munged, slurmdbd, slurmctld, slurmd started by the test).

A pipeline's workers go in as a job array and finish it, ``sacct`` shows the array's jobs completed, and a
worker cut off by its time limit releases its attempt: the task runs again on another worker and succeeds,
nothing failed. The limits and the batch script are checked with ``--dry-run`` against the same cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import sqlalchemy as sa

from conftest import PROJECT_ROOT, service_url, unavailable
from fault_helpers import cluster_factory, wait_for  # noqa: F401
from slurm_cluster import SlurmCluster, missing_programs

SCRIPT = os.path.join(PROJECT_ROOT, "eas_controller", "worker_orchestration", "slurm_workers.py")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    missing = missing_programs()
    if missing:
        unavailable("Slurm is not installed (missing %s): apt-get install slurm-wlm slurmdbd "
                    "slurm-wlm-mysql-plugin munge" % ", ".join(missing))
    mysql_url = service_url("mysql")  # slurmdbd keeps accounting in MariaDB, in a database of its own
    name = (sa.engine.make_url(mysql_url).database or "eas_test") + "_slurm_acct"
    cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm")), mysql_url, name)
    try:
        cluster.start()
    except Exception as error:
        cluster.stop()
        pytest.fail("the private Slurm cluster did not start: %s" % error, pytrace=False)
    yield cluster
    cluster.stop()


def slurm_workers(slurm, environment, *args: str) -> subprocess.CompletedProcess:
    env = dict(environment.env)
    env.update(SLURM_CONF=slurm.conf)
    for variable in ("SLURM_MAX_ARRAY_SIZE", "SLURM_MAX_SUBMIT_JOBS", "SLURM_MAX_RUNNING_SIZE"):
        env.pop(variable, None)
    result = subprocess.run([SCRIPT, *args], cwd=os.path.dirname(SCRIPT), env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def submitted_ids(result) -> list[str]:
    return re.search(r"job array\(s\) ([\d, ]+);", result.stdout).group(1).split(", ")


def sacct_states(slurm, job_id: str) -> dict[str, str]:
    out = slurm.run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,ExitCode").stdout
    return {line.split("|")[0]: line.split("|")[1] for line in out.splitlines() if line.strip()}


def all_final(slurm, job_id: str, count: int):
    states = sacct_states(slurm, job_id)
    elements = {key: value for key, value in states.items() if re.fullmatch(r"\d+_\d+", key)}
    if len(elements) == count and all(value not in ("PENDING", "RUNNING", "REQUEUED") for value in elements.values()):
        return elements
    return None


def all_tasks_done(cluster) -> bool:
    rows = cluster.rows("SELECT state FROM eas_tasks")
    return bool(rows) and {row.state for row in rows} == {"done"}


def test_a_pipeline_runs_on_a_slurm_job_array_and_sacct_shows_it_completed(slurm, cluster_factory):  # noqa: F811
    cluster = cluster_factory("sqlite")
    cluster.environment.script("job_submission/submit.py", "--tasks",
                               os.path.join(PROJECT_ROOT, "demo_jobs", "hello_pipeline.json"))
    cluster.scheduler()
    result = slurm_workers(slurm, cluster.environment, "--count", "2", "--time", "10", "--memory-gb", "0.5")
    (job_id,) = submitted_ids(result)
    wait_for(lambda: all_tasks_done(cluster), 240, "the pipeline to finish on the Slurm workers", interval=1)
    states = wait_for(lambda: all_final(slurm, job_id, 2), 180, "sacct to show the array's jobs ended", interval=2)
    assert states == {"%s_0" % job_id: "COMPLETED", "%s_1" % job_id: "COMPLETED"}
    tasks = cluster.rows("SELECT state FROM eas_tasks")
    assert tasks and {row.state for row in tasks} == {"done"}
    names = {row.name for row in cluster.rows("SELECT name FROM eas_workers")}
    assert names <= {"slurm-%s_%d@%s" % (job_id, index, slurm.host) for index in range(2)} and names
    ran_on = {row.name for row in cluster.rows(
        "SELECT DISTINCT w.name FROM eas_attempts a JOIN eas_workers w ON w.id = a.worker_id")}
    assert ran_on and ran_on <= names
    # each worker recorded the Slurm job and array ids it runs in (shown by worker_list.py)
    labels = [json.loads(row.labels) for row in cluster.rows("SELECT labels FROM eas_workers")]
    assert labels and all(label["slurm_array_job_id"] == str(job_id) for label in labels)
    assert {label["slurm_array_task_id"] for label in labels} <= {"0", "1"}


def test_a_worker_cut_off_by_its_time_limit_releases_its_task_and_another_worker_finishes_it(
        slurm, cluster_factory):  # noqa: F811
    cluster = cluster_factory("mysql")
    # Slurm sends the --signal warning up to 60 s before the time asked for (its timers run every 30 s), so
    # with a 2-minute limit and a 30 s margin SIGTERM comes 30-60 s after the start: after the worker
    # claimed the task, well before the task (100 s) could end, and before the limit.
    cluster.submit([{"task": "sleep", "name": "long", "seconds": 100}], job_name="timelimit")
    cluster.scheduler()
    first = slurm_workers(slurm, cluster.environment, "--count", "1", "--time", "2", "--margin", "30",
                          "--grace-period", "5", "--memory-gb", "0.5")
    (first_id,) = submitted_ids(first)
    wait_for(lambda: [row for row in cluster.attempts_of("long") if row.state == "running"], 120,
             "the first Slurm worker to start the long task", interval=1)
    wait_for(lambda: [row for row in cluster.attempts_of("long") if row.state == "cancelled"], 180,
             "the first worker to release the task before its time limit", interval=1)
    assert wait_for(lambda: all_final(slurm, first_id, 1), 120, "the first job to end", interval=2) == {
        "%s_0" % first_id: "COMPLETED"}  # the worker left by itself before Slurm had to kill it
    second = slurm_workers(slurm, cluster.environment, "--count", "1", "--time", "5", "--memory-gb", "0.5")
    (second_id,) = submitted_ids(second)
    wait_for(lambda: cluster.task("long").state == "done", 240, "the rerun of the long task", interval=1)
    attempts = cluster.attempts_of("long")
    assert [row.state for row in attempts] == ["cancelled", "succeeded"]
    assert attempts[0].error_text.startswith("released")
    workers = dict(cluster.rows("SELECT id, name FROM eas_workers"))
    assert workers[attempts[0].worker_id] == "slurm-%s_0@%s" % (first_id, slurm.host)
    assert workers[attempts[1].worker_id] == "slurm-%s_0@%s" % (second_id, slurm.host)
    assert not cluster.rows("SELECT id FROM eas_attempts WHERE state IN ('failed', 'stalled')")
    assert wait_for(lambda: all_final(slurm, second_id, 1), 120, "the second job to end", interval=2) == {
        "%s_0" % second_id: "COMPLETED"}


def test_dry_run_prints_the_batch_script_with_the_clusters_limits(slurm, eas_sqlite):
    result = slurm_workers(slurm, eas_sqlite, "--count", "3", "--cpus-per-task", "2", "--memory-gb", "3", "--gpus", "1",
                           "--time", "30", "--partition", "debug", "--margin", "90", "--dry-run")
    script = result.stdout
    for line in ("#SBATCH --array=0-2", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=3072M", "#SBATCH --gres=gpu:1",
                 "#SBATCH --time=30", "#SBATCH --partition=debug", "#SBATCH --signal=B:TERM@90"):
        assert line in script.splitlines()
    assert re.search(r"^exec .*worker\.py --name \S*SLURM_ARRAY_JOB_ID.* --grace-period 60 --burst$", script, re.M)
    assert "MaxArraySize = 1001 (scontrol show config)" in result.stderr
    assert "sacctmgr" in result.stderr
    assert "passw" not in script.lower()


def test_the_environment_limits_split_and_throttle_the_arrays(slurm, eas_sqlite, monkeypatch):
    monkeypatch.setenv("SLURM_MAX_ARRAY_SIZE", "2")
    env = dict(eas_sqlite.env, SLURM_CONF=slurm.conf, SLURM_MAX_ARRAY_SIZE="2", SLURM_MAX_RUNNING_SIZE="1",
               SLURM_MAX_SUBMIT_JOBS="4")
    result = subprocess.run([SCRIPT, "--count", "5", "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    arrays = re.findall(r"^#SBATCH --array=(\S+)$", result.stdout, re.M)
    assert arrays == ["0-1%1", "0-1%1"]  # 4 of 5: the submit limit holds one back
    assert "holds back 1" in result.stderr


def test_bad_slurm_arguments_give_one_clear_line(eas_sqlite):
    env = dict(eas_sqlite.env)
    result = subprocess.run([SCRIPT, "--margin", "30", "--grace-period", "60", "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --grace-period") and "Traceback" not in result.stderr


def test_the_submit_limit_is_looked_up_with_sacctmgr(slurm, eas_sqlite):
    slurm.run("sacctmgr", "-i", "modify", "qos", "normal", "set", "MaxSubmitJobsPerUser=3")
    try:
        result = slurm_workers(slurm, eas_sqlite, "--count", "5", "--dry-run")
    finally:
        slurm.run("sacctmgr", "-i", "modify", "qos", "normal", "set", "MaxSubmitJobsPerUser=-1")
    assert "MaxSubmitJobsPerUser = 3 (sacctmgr, QOS normal)" in result.stderr
    assert re.findall(r"^#SBATCH --array=(\S+)$", result.stdout, re.M) == ["0-2"]
    assert "submitting 3 of 5 workers" in result.stderr


def test_without_an_accounting_database_the_lookup_says_so_and_falls_back(slurm, eas_sqlite, tmp_path):
    conf = tmp_path / "slurm.conf"
    with open(slurm.conf) as handle:
        conf.write_text(handle.read().replace("accounting_storage/slurmdbd", "accounting_storage/none"))
    env = dict(eas_sqlite.env, SLURM_CONF=str(conf))
    for variable in ("SLURM_MAX_ARRAY_SIZE", "SLURM_MAX_SUBMIT_JOBS", "SLURM_MAX_RUNNING_SIZE"):
        env.pop(variable, None)
    result = subprocess.run([SCRIPT, "--count", "2", "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sacctmgr has no accounting database here" in result.stderr and "no submit limit assumed" in result.stderr
    assert re.findall(r"^#SBATCH --array=(\S+)$", result.stdout, re.M) == ["0-1"]
