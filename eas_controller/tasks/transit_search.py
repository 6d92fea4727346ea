"""Transit searches: ``transit_search_tls`` (Transit Least Squares, PyPI ``transitleastsquares``) and
``transit_search_bls_reference`` (astropy's ``BoxLeastSquares``), as in the seed.

Each reads ``inputs[lightcurve]`` (the first ``lc_duration`` days of it, if set), searches periods from
``search_settings.period_min`` (days) to ``period_max``, and records ``period`` (days), ``depth``
(fractional dip), ``duration`` (days), ``snr`` and ``outcome``: ``PASS`` when the light curve carries an
injected planet (its header says so, or the task gives ``injected_period``) and the period found is
within ``period_tolerance`` (relative, default 0.01 = 1%) of it, else ``FAIL``. A declared ``debugging``
output receives a tar.gz of the search's results and periodogram.

``transit_search_qats`` is listed so the seed's chains are understood, but no installable QATS library
exists: it fails at once, saying so, rather than pretend.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import tarfile
import tempfile

import numpy as np

from eas_controller.task_api import TaskFailure
from eas_controller.tasks import lightcurve_files
from eas_controller.tasks.lightcurve_ops import read_input

DEFAULT_TOLERANCE = 0.01
_TLS_OPTIONS = ("period_min", "period_max", "oversampling_factor", "duration_grid_step", "T0_fit_margin",
                "transit_depth_min", "R_star", "M_star", "R_star_min", "R_star_max", "M_star_min", "M_star_max",
                "n_transits_min")


def _search_settings(ctx) -> dict:
    settings = ctx.description.get("search_settings") or {}
    if not isinstance(settings, dict):
        raise TaskFailure("search_settings must be an object, not %r" % (settings,))
    return settings


def _prepared_curve(ctx) -> lightcurve_files.LightCurve:
    curve = read_input(ctx)
    duration = ctx.description.get("lc_duration")
    if duration is not None:
        curve = curve.truncated(float(duration))
    if len(curve.times) < 10:
        raise TaskFailure("light curve has %d samples within lc_duration; too few to search" % len(curve.times))
    good = np.isfinite(curve.fluxes)
    curve = lightcurve_files.LightCurve(curve.times[good], curve.fluxes[good] / np.mean(curve.fluxes[good]),
                                        curve.flags[good], curve.uncertainties[good], curve.metadata)
    return curve


def _injected_period(ctx, curve) -> float | None:
    given = ctx.description.get("injected_period")
    if given is not None:
        return float(given)
    if curve.metadata.get("planet_injected") and curve.metadata.get("orbital_period"):
        return float(curve.metadata["orbital_period"])
    return None


def _finite(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _record(ctx, curve, found: dict, periodogram: tuple) -> None:
    tolerance = float(ctx.description.get("period_tolerance", DEFAULT_TOLERANCE))
    injected = _injected_period(ctx, curve)
    period = _finite(found.get("period"))
    recovered = injected is not None and period is not None and abs(period - injected) <= tolerance * injected
    result = {key: _finite(value) if not isinstance(value, (int, str, bool)) else value for key, value in found.items()}
    result.update(outcome="PASS" if recovered else "FAIL", injected_period=injected, period_tolerance=tolerance)
    if curve.metadata.get("planet_injected") and curve.metadata.get("planet_radius") is not None:
        result["injected_planet_radius"] = float(curve.metadata["planet_radius"])  # Jupiter radii
    for key, value in result.items():
        ctx.set_metadata(key, value)
    ctx.log("best period %s d (injected %s d): %s" % (period, injected, result["outcome"]))
    if "debugging" in ctx.outputs:
        _write_debugging(ctx.outputs["debugging"], result, periodogram)


def _write_debugging(path: str, result: dict, periodogram: tuple) -> None:
    periods, power = periodogram
    table = "period_days,power\n" + "".join("%.6f,%.6g\n" % row for row in zip(periods, power))
    with tarfile.open(path, "w:gz") as archive:
        for name, text in (("results.json", json.dumps(result, indent=1)), ("periodogram.csv", table)):
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


_compiled_here = False


def _tls_locked(work):
    """TLS compiles numba kernels (some at import, some on first use) and caches them beside the package;
    two processes doing that at once (two workers starting together) can leave a cache that crashes every
    later run with a segmentation fault. So each process imports TLS and makes its first search while
    holding an exclusive lock on that cache; ``work(tls_class)`` is the search."""
    global _compiled_here
    if _compiled_here:
        from transitleastsquares import transitleastsquares

        return work(transitleastsquares)
    import importlib.util

    spec = importlib.util.find_spec("transitleastsquares")
    folder = os.path.join(os.path.dirname(spec.origin), "__pycache__")
    try:
        os.makedirs(folder, exist_ok=True)
        handle = open(os.path.join(folder, "eas-compile.lock"), "a")
    except OSError:  # a read-only installation: numba then caches elsewhere per user
        handle = open(os.path.join(tempfile.gettempdir(), "eas-tls-compile.lock"), "a")
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            from transitleastsquares import transitleastsquares

            result = work(transitleastsquares)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _compiled_here = True
    return result


def transit_search_tls(ctx) -> None:
    """Search with TLS; ``search_settings`` may also carry TLS's own speed and grid options
    (``oversampling_factor``, ``duration_grid_step``, ``T0_fit_margin`` ...)."""
    settings = _search_settings(ctx)
    unknown = sorted(set(settings) - set(_TLS_OPTIONS))
    if unknown:
        raise TaskFailure("search_settings has unknown TLS option(s) %s; known: %s" % (", ".join(unknown), ", ".join(_TLS_OPTIONS)))
    curve = _prepared_curve(ctx)
    options = {key: float(value) if key != "n_transits_min" else int(value) for key, value in settings.items()}
    options.setdefault("period_max", float(curve.times[-1] - curve.times[0]) / 2)
    results = _tls_locked(lambda tls: tls(curve.times, curve.fluxes, verbose=False).power(
        use_threads=max(1, ctx.cpus), show_progress_bar=False, **options))
    transit_times = getattr(results, "transit_times", None)
    found = {
        "period": results.period, "depth": 1 - results.depth if _finite(results.depth) is not None else None,
        "duration": results.duration, "snr": results.snr, "sde": results.SDE,
        "transit_count": int(len(transit_times)) if isinstance(transit_times, (list, np.ndarray)) else 0,
    }
    _record(ctx, curve, found, (np.asarray(results.periods), np.asarray(results.power)))


def transit_search_bls_reference(ctx) -> None:
    """Search with astropy's BoxLeastSquares: trial durations 0.05-0.2 days, at least two transits."""
    from astropy.timeseries import BoxLeastSquares

    settings = _search_settings(ctx)
    curve = _prepared_curve(ctx)
    span = float(curve.times[-1] - curve.times[0])
    minimum = float(settings.get("period_min", 0.5))
    maximum = float(settings.get("period_max", span / 2))
    if not 0 < minimum < maximum:
        raise TaskFailure("period range %g to %g days is empty (the light curve spans %.3g days)" % (minimum, maximum, span))
    durations = np.linspace(0.05, 0.2, 10)
    durations = durations[durations < minimum] if np.any(durations < minimum) else np.array([minimum / 2])
    # Each sample's scatter (robust standard deviation), so that depth_snr is a signal-to-noise ratio.
    scatter = 1.4826 * float(np.median(np.abs(curve.fluxes - np.median(curve.fluxes)))) or 1e-6
    model = BoxLeastSquares(curve.times, curve.fluxes, dy=np.full_like(curve.fluxes, scatter))
    results = model.autopower(durations, minimum_period=minimum, maximum_period=maximum, minimum_n_transit=2,
                              frequency_factor=float(settings.get("frequency_factor", 2.0)))
    best = int(np.nanargmax(results.power))
    found = {
        "period": results.period[best], "depth": results.depth[best], "duration": results.duration[best],
        "snr": results.depth_snr[best], "power": results.power[best],
    }
    _record(ctx, curve, found, (np.asarray(results.period), np.asarray(results.power)))


QATS_UNAVAILABLE = ("transit_search_qats is not available here: QATS (Carter & Agol 2012) has no installable, "
                    "maintained Python package, so this controller does not ship it; use transit_search_tls or "
                    "transit_search_bls_reference, or register your own QATS build as a command: task type "
                    "(docs/task_api/transit_search_qats.md)")


def transit_search_qats(ctx) -> None:
    """Refuses plainly: see :data:`QATS_UNAVAILABLE`."""
    raise TaskFailure(QATS_UNAVAILABLE)
