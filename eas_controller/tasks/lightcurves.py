"""A toy transit pipeline used by the demo chains: synthesise light curves, measure them, summarise.

Small but real: each step reads the files the previous one wrote, so the chains exercise dependency
inference, file products and output metadata exactly as a science pipeline would.
"""

import csv
import math

from eas_controller.constants import constants
from eas_controller.tasks.builtin import TaskFailure


def _transit_flux(time_days: float, depth: float, period: float, duration: float) -> float:
    phase = (time_days % period) / period
    half_width = duration / period / 2
    return 1.0 - depth if abs(phase - 0.5) < half_width else 1.0


def synthesise(ctx) -> None:
    """Write ``outputs[lightcurve]``: time (days) and relative flux with a box-shaped transit."""
    radius = float(ctx.description.get("planet_radius", constants.Rearth))
    star_radius = float(ctx.description.get("star_radius", constants.Rsun))
    period = float(ctx.description.get("period_days", 10.0))
    duration = float(ctx.description.get("lc_duration", 30.0))  # days of observation
    cadence_minutes = float(ctx.description.get("cadence_minutes", 60.0))
    if radius <= 0 or star_radius <= 0 or period <= 0 or duration <= 0 or cadence_minutes <= 0:
        raise TaskFailure("planet_radius, star_radius, period_days, lc_duration and cadence_minutes must be > 0")
    depth = (radius / star_radius) ** 2
    points = int(duration * 24 * 60 / cadence_minutes)
    with open(ctx.outputs["lightcurve"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time_days", "flux"])
        for index in range(points):
            time_days = index * cadence_minutes / (24 * 60)
            writer.writerow(["%.6f" % time_days, "%.9f" % _transit_flux(time_days, depth, period, 0.3)])
    ctx.log("wrote %d points, true depth %.3g" % (points, depth))
    ctx.set_metadata("true_depth", depth)
    ctx.set_metadata("points", points)


def _read_fluxes(path: str) -> list:
    with open(path, newline="") as handle:
        return [float(row["flux"]) for row in csv.DictReader(handle)]


def measure_depth(ctx) -> None:
    """Record the transit depth of ``inputs[lightcurve]``; ``outcome`` is PASS above ``threshold`` ppm."""
    fluxes = _read_fluxes(ctx.inputs["lightcurve"])
    if not fluxes:
        raise TaskFailure("light curve %s is empty" % ctx.inputs["lightcurve"])
    depth = max(fluxes) - min(fluxes)
    threshold_ppm = float(ctx.description.get("threshold_ppm", 50))
    ctx.set_metadata("depth", depth)
    ctx.set_metadata("depth_ppm", round(depth * 1e6, 3))
    ctx.set_metadata("outcome", "PASS" if depth * 1e6 >= threshold_ppm else "FAIL")


def summarise(ctx) -> None:
    """Write ``outputs[summary]``: one row per input light curve with its points and depth."""
    rows = []
    for semantic_type, path in sorted(ctx.inputs.items()):
        fluxes = _read_fluxes(path)
        depth = max(fluxes) - min(fluxes) if fluxes else math.nan
        rows.append((semantic_type, len(fluxes), depth * 1e6))
    with open(ctx.outputs["summary"], "w") as handle:
        handle.write("input,points,depth_ppm\n")
        for semantic_type, points, depth_ppm in rows:
            handle.write("%s,%d,%.3f\n" % (semantic_type, points, depth_ppm))
    ctx.set_metadata("light_curves", len(rows))
