"""The task the chaos run executes: reads its inputs, sleeps a while, writes products that name their attempt.

Every product begins with ``task <id> attempt <id> inputs <md5 of the inputs>``, so the run can check that
the file on disk was made by the one attempt that succeeded, and from the inputs its producers recorded.
"""

import hashlib
import time


def step(ctx):
    digest = hashlib.md5()
    for semantic in sorted(ctx.inputs):
        with open(ctx.inputs[semantic], "rb") as handle:
            digest.update(handle.read())
    time.sleep(float(ctx.description.get("seconds", 0)))
    padding = int(ctx.description.get("bytes", 0))
    for semantic, path in ctx.outputs.items():
        with open(path, "w") as handle:
            handle.write("task %d attempt %d inputs %s\n" % (ctx.task_id, ctx.attempt_id, digest.hexdigest()))
            handle.write(("%s " % semantic) * (padding // (len(semantic) + 1)) + "\n")
