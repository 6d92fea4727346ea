"""explain_task.py on a live pipeline with real workers and a real scheduler: one task in each situation a
user asks about, each explained with the right reason."""

import json

import pytest

from fault_helpers import cluster_factory, wait_for  # noqa: F401  (fixture)

TASKS = [
    {"task": "error", "name": "producer", "message": "no file for you", "outputs": {"text": "a.txt"}},
    {"task": "concatenate", "name": "consumer", "inputs": {"text": "a.txt"}, "outputs": {"joined": "b.txt"}},
    {"task": "sleep", "name": "unrun", "seconds": 0.1},
    {"task": "fault_two_cpus", "name": "big", "seconds": 0.1},
    {"task": "fault_fail_twice_max", "name": "backoff"},
    {"task": "null", "name": "held_one"},
    {"task": "fault_sleep_write", "name": "runner", "seconds": 60},
]


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_explain_task_in_every_situation(cluster_factory, backend):  # noqa: F811
    cluster = cluster_factory(backend, retry_backoff_s=600)
    cluster.submit(TASKS, job_name="explain_me")
    cluster.environment.script("queue_management/empty_queue.py", "--task-type", "null", "--hold")
    cluster.worker("--task-types", "fault_sleep_write", "--cpus", "1", "--grace-period", "1", name="long")
    cluster.worker("--task-types", "error,concatenate,fault_two_cpus,fault_fail_twice_max,null", "--cpus", "1",
                   "--grace-period", "1", name="small")
    cluster.scheduler()
    wait_for(lambda: cluster.task("producer").state == "failed", 60, "the producer to fail")
    wait_for(lambda: cluster.task("backoff").state == "ready" and cluster.task("backoff").not_before, 60,
             "the first attempt of 'backoff' to fail")
    wait_for(lambda: cluster.task("runner").state == "running", 60, "the long task to run")
    wait_for(lambda: cluster.task("big").state == "queued" and cluster.task("unrun").state == "queued", 60,
             "the unrunnable tasks to be queued")

    def explain(name):
        out = cluster.environment.script("diagnostics/explain_task.py", str(cluster.task(name).id), "--format", "json")
        return json.loads(out.stdout)

    def reason(result, code):
        return next(r for r in result["reasons"] if r["code"] == code)

    consumer = explain("consumer")
    assert consumer["state"] == "waiting" and "producer_failed" in consumer["codes"]
    assert reason(consumer, "producer_failed")["producer_id"] == cluster.task("producer").id
    assert "a.txt" in reason(consumer, "producer_failed")["text"]

    unrun = explain("unrun")
    assert unrun["state"] == "queued" and "no_worker_for_type" in unrun["codes"]
    assert "No live worker runs task type sleep" in reason(unrun, "no_worker_for_type")["text"]

    big = explain("big")
    assert "too_big" in big["codes"] and reason(big, "too_big")["needs"]["cpu"] == 2
    assert "the largest offer is cpu=1" in reason(big, "too_big")["text"]

    backoff = explain("backoff")
    assert backoff["state"] == "ready" and "retry_backoff" in backoff["codes"]
    assert 500 < reason(backoff, "retry_backoff")["seconds_left"] <= 600
    assert "attempt_failed" in backoff["codes"] and backoff["max_attempts"] == 2

    held = explain("held_one")
    assert held["state"] == "held" and held["codes"][0] == "held"

    producer = explain("producer")
    assert producer["codes"][0] == "failed_final" and "no file for you" in reason(producer, "failed_final")["text"]
    assert [a["state"] for a in producer["attempts"]] == ["failed"]

    runner = explain("runner")
    assert runner["state"] == "running" and "running" in runner["codes"]
    assert reason(runner, "running")["worker"] == "long" and "expires in" in reason(runner, "running")["text"]

    text = cluster.environment.script("diagnostics/explain_task.py", str(cluster.task("consumer").id)).stdout
    assert "which failed: it will not run unless that task is rescheduled" in text
    root = json.loads(cluster.environment.script(
        "diagnostics/explain_task.py", str(cluster.task("producer").parent_id), "--format", "json").stdout)
    assert root["is_control"] and "waiting_children" in root["codes"]
