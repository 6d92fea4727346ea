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
