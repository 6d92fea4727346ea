"""``ingest_external_lcs``: bring light curves made elsewhere (the light-curve stitching group's CSV
files, ``lc_type`` = ``lcsg``) into the data directory in the pipeline's own format."""

from __future__ import annotations

import glob
import gzip
import os
import re

import numpy as np

from eas_controller.task_api import TaskFailure
from eas_controller.tasks import lightcurve_files

_METADATA_LINE = re.compile(r"# #(.*)=(.*)")


def read_lcsg(path: str) -> lightcurve_files.LightCurve:
    """A stitching-group light curve: CSV lines ``time (days), flux, flag``; ``# #key=value`` metadata."""
    metadata = {"filename": os.path.basename(path)}
    rows = []
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as handle:
        for line in handle:
            if not line.strip():
                continue
            if line.startswith("#"):
                found = _METADATA_LINE.match(line)
                if found:
                    key, value = found.group(1).strip(), found.group(2).strip()
                    try:
                        metadata[key] = float(value)
                    except ValueError:
                        metadata[key] = value
                continue
            words = line.split(",")
            rows.append((float(words[0]), float(words[1]), float(words[2]) if len(words) > 2 else 0.0))
    table = np.array(rows, dtype=float).reshape(-1, 3)
    return lightcurve_files.LightCurve.make(table[:, 0], table[:, 1], table[:, 2], None, metadata)


def _input_root(ctx) -> str:
    root = ctx.description.get("input_dir") or os.environ.get("EAS_INPUT_DIR")
    if not root:
        root = os.path.join(os.environ.get("EAS_DATA_DIR", "."), "input")
    return root


def ingest_external_lcs(ctx) -> None:
    """Convert each declared input and every file matching ``input_path`` (a glob under the input directory) into
    ``<name>.gz`` in ``<data dir>/<ingest_directory>`` (default ``ingested``); a declared ``lightcurve`` output gets the first."""
    lc_type = ctx.description.get("lc_type", "lcsg")
    if lc_type != "lcsg":
        raise TaskFailure("lc_type must be 'lcsg' (the only external format known), not %r" % (lc_type,))
    pattern = ctx.description.get("input_path")
    if pattern is not None and not isinstance(pattern, str):
        raise TaskFailure("input_path must be a glob (a string) under the input directory, not %r" % (pattern,))
    if not pattern and not ctx.inputs:
        raise TaskFailure("give input_path (a glob under the input directory) or declared inputs")
    root = _input_root(ctx)
    paths = sorted(glob.glob(os.path.join(root, pattern))) if pattern else []
    if pattern and not paths:
        raise TaskFailure("no file matches %s under %s" % (pattern, root))
    paths = [ctx.inputs[semantic] for semantic in sorted(ctx.inputs)] + paths
    destination = os.path.join(os.environ.get("EAS_DATA_DIR", ctx.work_dir),
                               ctx.description.get("ingest_directory") or "ingested")
    os.makedirs(destination, exist_ok=True)
    names = []
    for number, path in enumerate(paths):
        try:
            curve = read_lcsg(path)
        except (OSError, ValueError, IndexError) as error:
            raise TaskFailure("cannot read %s as an lcsg light curve: %s" % (path, error)) from None
        name = re.sub(r"(\.csv)?(\.gz)?$", "", os.path.basename(path)) + ".gz"
        target = os.path.join(destination, name)
        partial = os.path.join(destination, ".partial." + name)  # complete before readers can see it
        lightcurve_files.write(partial, curve)
        os.replace(partial, target)
        if number == 0 and "lightcurve" in ctx.outputs:
            lightcurve_files.write(ctx.outputs["lightcurve"], curve)
        names.append(name)
        ctx.log("ingested %s as %s (%d samples)" % (path, target, len(curve.times)))
    ctx.set_metadata("ingested_count", len(names))
    ctx.set_metadata("ingested_files", names)
    ctx.set_metadata("ingest_directory", destination)
