"""Small ``python:`` implementations used by the tests (registered in tests/task_types_test.yaml)."""

import os
import time


def write_text(ctx):
    with open(ctx.outputs["text"], "w") as handle:
        handle.write(str(ctx.description.get("text", "")))
    print("wrote %d characters" % len(str(ctx.description.get("text", ""))))


def concatenate(ctx):
    with open(ctx.outputs["joined"], "w") as out:
        for semantic in sorted(ctx.inputs):
            with open(ctx.inputs[semantic]) as handle:
                out.write(handle.read())


def record_order(ctx):
    path = ctx.description["order_log"]
    with open(path, "a") as handle:
        handle.write("%s %.6f %d\n" % (ctx.description.get("name", ""), time.time(), os.getpid()))
    time.sleep(float(ctx.description.get("seconds", 0)))
    for semantic, output in ctx.outputs.items():
        with open(output, "w") as handle:
            handle.write(semantic)


def emit_metadata(ctx):
    for key, value in (ctx.description.get("values") or {}).items():
        ctx.set_metadata(key, value)


def python_environment(ctx):
    """The scratch folder's contract seen from a ``python:`` task: first touched as ``touch`` says."""
    import json
    import subprocess

    touch = ctx.description.get("touch")
    if touch == "relative":
        with open("note.txt", "w") as handle:
            handle.write("relative")
    elif touch == "subprocess":
        subprocess.run(["/bin/sh", "-c", 'echo "SHELL_PWD=$(pwd)"; echo "SHELL_DESCRIPTION=$(cat "$EAS_TASK_DESCRIPTION")"'],
                       check=True)
    elif touch == "ctx":
        print("CTX_WORK=%s" % ctx.work_dir)
    with open(os.environ["EAS_TASK_DESCRIPTION"]) as handle:
        description = json.load(handle)
    with open(os.environ["EAS_METADATA_IN"]) as handle:
        metadata_in = json.load(handle)
    print("CWD=%s" % os.getcwd())
    print("WORK=%s" % os.environ["EAS_WORK_DIR"])
    print("NAME=%s" % description["name"])
    print("METADATA_KEYS=%s" % ",".join(sorted(metadata_in)))
    print("NOTE=%s" % os.path.exists(os.path.join(os.environ["EAS_WORK_DIR"], "note.txt")))
    with open(os.environ["EAS_METADATA_OUT"], "w") as handle:
        json.dump({"seen": description["name"]}, handle)
    print("last words without a newline", end="")


# -- workers under faults (tests/test_faults.py, tests/test_worker_features.py) --

def fault_sleep_write(ctx):
    """Slow enough to be interrupted; every product byte and metadata item names the attempt that made it."""
    if ctx.description.get("journal"):
        with open(ctx.description["journal"], "a") as handle:
            handle.write("%d %d %.6f\n" % (ctx.task_id, ctx.attempt_id, time.time()))
    print("attempt %d started in pid %d" % (ctx.attempt_id, os.getpid()))
    time.sleep(float(ctx.description.get("seconds", 0)))
    for semantic, path in ctx.outputs.items():
        with open(path, "w") as handle:
            handle.write("made by attempt %d\n" % ctx.attempt_id)
    ctx.set_metadata("made_by_attempt", ctx.attempt_id)


def fault_busy(ctx):
    deadline = time.time() + float(ctx.description.get("seconds", 1))
    count = 0
    while time.time() < deadline:
        count += 1
    ctx.set_metadata("loops", count)


def fault_interval(ctx):
    started = time.time()
    time.sleep(float(ctx.description.get("seconds", 0.5)))
    with open(ctx.description["journal"], "a") as handle:
        handle.write("%.6f %.6f %s\n" % (started, time.time(), os.environ.get("EAS_CPUS")))
    ctx.set_metadata("cpus", ctx.cpus)


def fault_gpu(ctx):
    ctx.set_metadata("eas_gpus", os.environ.get("EAS_GPUS"))
    ctx.set_metadata("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))


def fault_spawn_and_hang(ctx):
    import subprocess

    children = [subprocess.Popen(["sleep", "60"]), subprocess.Popen(["sleep", "61"], start_new_session=True)]
    with open(ctx.description["pid_file"], "a") as handle:
        handle.write("".join("%d\n" % child.pid for child in children) + "%d\n" % os.getpid())
    time.sleep(60)


def fault_qc_writer(ctx):
    flag = ctx.description.get("fix_flag")
    text = ctx.description["fixed_text"] if flag and os.path.exists(flag) else ctx.description["text"]
    with open(ctx.outputs["text"], "w") as handle:
        handle.write(text)


def qc_not_bad(path):
    with open(path) as handle:
        content = handle.read()
    if "bad" in content:
        return False, "the product says %r" % content.strip()
    return True


def fault_chatty(ctx):
    import sys

    for number in range(int(ctx.description.get("lines", 2))):
        if number:
            time.sleep(float(ctx.description.get("pause", 0)))
        print("out line %d" % number)
        print("err line %d" % number, file=sys.stderr)
    ctx.log("a line from ctx.log", "warning")
    if ctx.description.get("crash"):
        _deep_failure(3)


def _deep_failure(depth):
    if depth:
        _deep_failure(depth - 1)
    raise ValueError("the innermost frame failed on purpose")


def fault_niceness(ctx):
    ctx.set_metadata("nice", os.nice(0))


def read_shared_file(ctx):
    """Copies the shared file ``ctx.resources["model"]`` to outputs[copy]; checks EAS_RESOURCE_MODEL names it."""
    path = ctx.resources["model"]
    assert os.environ["EAS_RESOURCE_MODEL"] == path, (os.environ["EAS_RESOURCE_MODEL"], path)
    with open(path) as source, open(ctx.outputs["copy"], "w") as target:
        target.write(source.read())
