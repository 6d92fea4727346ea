"""Light-curve arithmetic and checks: ``multiply`` (inject one curve into another), ``verify`` (is it
sampled on a fixed step?), ``binning`` (resample onto a new fixed step), as in the seed."""

from __future__ import annotations

import numpy as np

from eas_controller.task_api import TaskFailure
from eas_controller.tasks import lightcurve_files


def read_input(ctx, semantic: str = "lightcurve") -> lightcurve_files.LightCurve:
    """The input light curve ``semantic``, or a clear failure naming what is wrong."""
    path = ctx.inputs.get(semantic)
    if path is None:
        raise TaskFailure("inputs must name a %s file" % semantic)
    try:
        curve = lightcurve_files.read(path)
    except (OSError, ValueError, EOFError) as error:
        raise TaskFailure("cannot read light curve %s: %s" % (path, error)) from None
    if len(curve.times) < 2:
        raise TaskFailure("light curve %s has %d samples; at least 2 are needed" % (path, len(curve.times)))
    return curve


def _output_path(ctx) -> str:
    if "lightcurve" not in ctx.outputs:
        raise TaskFailure("outputs must name a lightcurve file")
    return ctx.outputs["lightcurve"]


def multiply(ctx) -> None:
    """``lightcurve_1`` times ``lightcurve_2`` (resampled onto the first's times); the first and last
    samples are dropped, as the seed does, since resampling is unreliable at the edges."""
    first, second = read_input(ctx, "lightcurve_1"), read_input(ctx, "lightcurve_2")
    resampled = np.interp(first.times, second.times, second.fluxes)
    resampled_error = np.interp(first.times, second.times, second.uncertainties)
    resampled_flags = np.interp(first.times, second.times, second.flags)
    metadata = dict(first.metadata)
    for key, value in second.metadata.items():  # the planet's facts win (the star's curve has none)
        if key not in metadata or second.metadata.get("planet_injected"):
            metadata[key] = value
    metadata["planet_injected"] = bool(first.metadata.get("planet_injected") or second.metadata.get("planet_injected"))
    product = lightcurve_files.LightCurve.make(
        first.times[1:-1], (first.fluxes * resampled)[1:-1], np.maximum(first.flags, resampled_flags)[1:-1],
        np.hypot(first.uncertainties, resampled_error)[1:-1], metadata,
    )
    lightcurve_files.write(_output_path(ctx), product)
    ctx.log("multiplied: %d samples" % len(product.times))


def fixed_step_errors(curve: lightcurve_files.LightCurve, tolerance_s: float = 1.0) -> int:
    """How many time steps differ from the typical step by more than ``tolerance_s`` seconds."""
    step = curve.sampling_interval()
    return int(np.count_nonzero(np.abs(np.diff(curve.times) - step) * 86400 > tolerance_s))


def verify(ctx) -> None:
    """Record the time and flux ranges and whether the curve is on a fixed step (``verification``)."""
    curve = read_input(ctx)
    if not np.all(np.isfinite(curve.fluxes)) or not np.all(np.isfinite(curve.times)):
        raise TaskFailure("light curve %s holds non-finite times or fluxes" % ctx.inputs["lightcurve"])
    errors = fixed_step_errors(curve)
    ctx.set_metadata("verification_time_min", float(np.min(curve.times)))
    ctx.set_metadata("verification_time_max", float(np.max(curve.times)))
    ctx.set_metadata("verification_flux_min", float(np.min(curve.fluxes)))
    ctx.set_metadata("verification_flux_max", float(np.max(curve.fluxes)))
    ctx.set_metadata("verification", errors == 0)
    ctx.log("time span %.2f to %.2f days; %s" % (
        np.min(curve.times), np.max(curve.times), "fixed step" if errors == 0 else "%d irregular steps" % errors))


def binning(ctx) -> None:
    """Resample onto a fixed step of ``cadence`` seconds: the mean of the samples in each bin (bins with
    none are interpolated from their neighbours)."""
    try:
        cadence = float(ctx.description["cadence"])
    except (KeyError, TypeError, ValueError):
        raise TaskFailure("binning needs a numeric cadence field (seconds)") from None
    if cadence <= 0:
        raise TaskFailure("cadence must be > 0 seconds (got %g)" % cadence)
    curve = read_input(ctx)
    step = cadence / 86400
    start = float(np.min(curve.times))
    count = int(np.floor((np.max(curve.times) - start) / step)) + 1
    index = np.clip(((curve.times - start) / step).astype(int), 0, count - 1)
    members = np.bincount(index, minlength=count)
    sums = np.bincount(index, weights=curve.fluxes, minlength=count)
    flags = np.zeros(count)
    np.maximum.at(flags, index, curve.flags)
    centres = start + (np.arange(count) + 0.5) * step
    filled = members > 0
    fluxes = np.interp(centres, centres[filled], sums[filled] / members[filled])
    noise = np.sqrt(np.bincount(index, weights=curve.uncertainties ** 2, minlength=count))
    uncertainties = np.where(filled, noise / np.maximum(members, 1), 0.0)
    metadata = dict(curve.metadata, sampling_cadence=cadence)
    lightcurve_files.write(_output_path(ctx), lightcurve_files.LightCurve.make(
        centres - start, fluxes, flags, uncertainties, metadata))
    ctx.set_metadata("points", int(count))
    ctx.log("binned %d samples into %d bins of %g s" % (len(curve.times), count, cadence))
