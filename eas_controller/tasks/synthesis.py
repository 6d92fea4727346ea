"""Synthetic light curves: ``synthesis_batman`` (a transit model, PyPI ``batman-package``) and
``synthesis_psls`` (the PLATO Solar-like Light-curve Simulator, PyPI ``psls``).

Settings come from the task's ``specs`` in the seed's units: durations and times in days, radii in
Jupiter radii, semi-major axis in AU, cadence in seconds. Both record the seed's output metadata (the
settings plus ``integrated_transit_power``, ``pixels_in_transit``, ``pixels_out_of_transit`` and the
multiple-event statistic ``mes``) on the task and in the light curve's header.
"""

from __future__ import annotations

import math
import os
import random
import sys

import numpy as np
import yaml

from eas_controller.task_api import TaskFailure
from eas_controller.tasks import lightcurve_files

# The seed's physical constants (metres), which its units are built on.
SUN_RADIUS_M = 695500e3
JUPITER_RADIUS_M = 71492e3
AU_M = 149597870700
PLATO_NOISE = 0.000315  # relative noise of one 25-second PLATO sample

_ORBIT_DEFAULTS = {
    "duration": 730.0, "t0": 1.0, "eccentricity": 0.0, "star_radius": SUN_RADIUS_M / JUPITER_RADIUS_M,
    "planet_radius": 1.0, "orbital_period": 365.0, "semi_major_axis": 1.0, "orbital_angle": 0.0,
    "impact_parameter": None, "sampling_cadence": 25.0,
}
_BATMAN_DEFAULTS = dict(_ORBIT_DEFAULTS, noise=0.0, mes_assume_noise=None)
_PSLS_DEFAULTS = dict(
    _ORBIT_DEFAULTS, mode="main_sequence", enable_transits=True, nsr=73.0, mask_updates=False,
    enable_systematics=False, enable_random_noise=True, number_camera_groups=4, number_cameras_per_group=6,
    master_seed=None,
)


def _settings(ctx, defaults: dict) -> dict:
    specs = ctx.description.get("specs") or {}
    if not isinstance(specs, dict):
        raise TaskFailure("specs must be an object of settings, not %r" % (specs,))
    unknown = sorted(set(specs) - set(defaults) - {"threads"})
    if unknown:
        raise TaskFailure("specs has unknown setting(s) %s; known: %s" % (", ".join(unknown), ", ".join(sorted(defaults))))
    settings = dict(defaults)
    for key, value in specs.items():
        if key == "orbital_angle" and value is not None:
            settings["impact_parameter"] = None
        if key == "impact_parameter" and value is not None:
            settings["orbital_angle"] = None
        settings[key] = value
    for key, value in settings.items():
        if key not in ("mode", "impact_parameter", "mes_assume_noise", "master_seed", "orbital_angle") and value is not None:
            try:
                settings[key] = float(value) if not isinstance(value, bool) else value
            except (TypeError, ValueError):
                raise TaskFailure("specs / %s must be a number, not %r" % (key, value)) from None
    for key in ("duration", "sampling_cadence", "star_radius", "orbital_period"):
        if not settings[key] > 0:
            raise TaskFailure("specs / %s must be > 0 (got %r)" % (key, settings[key]))
    return settings


def _orbital_angle(settings: dict) -> float:
    """Degrees from edge-on; from ``impact_parameter`` (0-1) when that is set, as the seed does."""
    if settings.get("impact_parameter") is not None:
        ratio = float(settings["impact_parameter"]) * settings["star_radius"] / (
            settings["semi_major_axis"] * AU_M / JUPITER_RADIUS_M)
        return math.degrees(math.asin(min(1.0, ratio)))
    return float(settings.get("orbital_angle") or 0.0)


def batman_model(settings: dict, times_days: np.ndarray) -> np.ndarray:
    """Relative flux of the transiting planet described by ``settings`` (no noise)."""
    import batman

    params = batman.TransitParams()
    params.t0 = settings["t0"]
    params.per = settings["orbital_period"]
    params.rp = settings["planet_radius"] / settings["star_radius"]
    params.a = settings["semi_major_axis"] * (AU_M / JUPITER_RADIUS_M) / settings["star_radius"]
    params.inc = 90 - _orbital_angle(settings)
    params.ecc = settings["eccentricity"]
    params.w = 90.0
    params.u = [0.1, 0.3]
    params.limb_dark = "quadratic"
    model = batman.TransitModel(params, times_days, nthreads=1)
    return np.asarray(model.light_curve(params), dtype=float)


def transit_statistics(model_flux: np.ndarray, noise_per_sample: float) -> dict:
    """The seed's multiple-event statistic: summed transit signal over the noise of the samples in transit."""
    power = float(np.sum(1 - model_flux))
    in_transit = int(np.count_nonzero(model_flux < 1))
    if in_transit < 1:
        mes = 0.0
    elif noise_per_sample <= 0:
        mes = 1e8
    else:
        mes = min(1e8, power / noise_per_sample / math.sqrt(in_transit))
    return {"integrated_transit_power": power, "pixels_in_transit": in_transit,
            "pixels_out_of_transit": int(len(model_flux) - in_transit), "mes": mes}


def _raster(settings: dict) -> np.ndarray:
    return np.arange(0.0, settings["duration"], settings["sampling_cadence"] / 86400)


def _finish(ctx, settings: dict, curve_times, fluxes, statistics: dict, tool: str) -> None:
    metadata = lightcurve_files.plain(dict(settings, **statistics, synthesis_tool=tool))
    metadata["planet_injected"] = bool(settings.get("enable_transits", True)) and settings["planet_radius"] > 0
    curve = lightcurve_files.LightCurve.make(curve_times, fluxes, metadata=metadata)
    if "lightcurve" not in ctx.outputs:
        raise TaskFailure("outputs must name a lightcurve file")
    lightcurve_files.write(ctx.outputs["lightcurve"], curve)
    for key, value in metadata.items():
        if value is not None:
            ctx.set_metadata(key, value)
    ctx.log("%s: %d samples every %g s over %g days; mes %.3g" % (
        tool, len(curve.times), settings["sampling_cadence"], settings["duration"], statistics["mes"]))


def synthesis_batman(ctx) -> None:
    """A transit light curve from batman, with Gaussian noise of ``noise`` per 25-second sample."""
    settings = _settings(ctx, _BATMAN_DEFAULTS)
    times = _raster(settings)
    flux = batman_model(settings, times)
    scale = math.sqrt(25 / settings["sampling_cadence"])
    noise = settings["noise"] * scale
    assumed = settings["mes_assume_noise"]
    statistics = transit_statistics(flux, float(assumed) * scale if assumed is not None else noise)
    if noise > 0:
        flux = flux + np.random.default_rng().normal(0.0, noise, size=len(flux))
    _finish(ctx, settings, times, flux, statistics, "batman")


# PSLS star models that need no data files (its "universal pattern" of oscillation modes).
_STARS = {
    "main_sequence": {"ES": "ms", "Teff": 5750.0, "Logg": 4.353, "numax": 2561.0, "delta_nu": 117.0,
                      "DPI": -1, "q": 0.0},
    "red_giant": {"ES": "rg", "Teff": 4800.0, "Logg": 2.7, "numax": 179.3, "delta_nu": 13.68,
                  "DPI": 80.58, "q": 0.15},
}


def _psls_config(settings: dict, duration: float, seed: int) -> dict:
    star = _STARS[settings["mode"]]
    cadence = settings["sampling_cadence"]
    return {
        "Observation": {"QuarterDuration": [float(duration)], "MasterSeed": seed,
                        "Gaps": {"Enable": 0, "Seed": -1, "InterQuarterGapDuration": 0.0, "RandomGapDuration": 0.0,
                                 "RandomGapTimeFraction": 0.0, "RandomGapStep": 0.0, "PeriodicGapCadence": 0.0,
                                 "PeriodicGapDuration": 0.0, "PeriodicGapJitter": 0.0, "PeriodicGapStep": 0.0}},
        "Instrument": {
            "Sampling": cadence, "IntegrationTime": cadence * 22 / 25,
            "GroupID": list(range(1, int(settings["number_camera_groups"]) + 1)),
            "NCamera": int(settings["number_cameras_per_group"]), "TimeShift": 6.25,
            "RandomNoise": {"Enable": int(bool(settings["enable_random_noise"])), "Type": "PLATO_SCALING",
                            "NSR": float(settings["nsr"])},
            "Systematics": {"Enable": 0, "Table": "", "Version": 2, "DriftLevel": "low", "Seed": -1},
        },
        "Star": {"Mag": 10.0, "ID": 12069449, "ModelType": "UP", "ModelDir": ".", "ModelName": "",
                 "ES": star["ES"], "Teff": star["Teff"], "Logg": star["Logg"], "SurfaceRotationPeriod": 0.0,
                 "CoreRotationFreq": 0.0, "Inclination": 0.0},
        "Oscillations": {"Enable": 1, "numax": star["numax"], "delta_nu": star["delta_nu"], "DPI": star["DPI"],
                         "q": star["q"], "SurfaceEffects": 0, "Seed": -1},
        "Activity": {"Enable": 0, "Sigma": 40.0, "Tau": 0.2, "Seed": -1,
                     "Spot": {"Enable": 0}, "Flare": {"Enable": 0}},
        "Granulation": {"Enable": 1, "Type": 1, "Seed": -1},
        "Transit": {"Enable": int(bool(settings["enable_transits"])), "PlanetRadius": settings["planet_radius"],
                    "OrbitalPeriod": settings["orbital_period"], "PlanetSemiMajorAxis": settings["semi_major_axis"],
                    "OrbitalAngle": _orbital_angle(settings), "LimbDarkeningCoefficients": [0.25, 0.75]},
        "External": {"Enable": 0, "FilePath": ""},
    }


def _run_psls(config_path: str, work_dir: str) -> None:
    """Run PSLS's own main program in this (reusable) process: importing PSLS and its dependencies costs
    seconds, which a fresh interpreter per light curve would pay every time."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import psls

    saved_argv, saved_directory = sys.argv, os.getcwd()
    sys.argv = ["psls", config_path]
    os.chdir(work_dir)
    try:
        psls.main()
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise TaskFailure("PSLS stopped with status %r (see the log lines above)" % (stop.code,)) from None
    finally:
        sys.argv = saved_argv
        os.chdir(saved_directory)


def synthesis_psls(ctx) -> None:
    """A PLATO light curve of a Sun-like star (or red giant) from PSLS: oscillations, granulation,
    PLATO's random noise and, if enabled, the transits of one planet."""
    settings = _settings(ctx, _PSLS_DEFAULTS)
    settings["enable_transits"] = bool(settings["enable_transits"])
    if settings["mode"] not in _STARS:
        raise TaskFailure("specs / mode must be one of %s, not %r" % (", ".join(sorted(_STARS)), settings["mode"]))
    if settings["enable_systematics"] or settings["mask_updates"]:
        raise TaskFailure("specs / enable_systematics and mask_updates need the PLATO systematics tables, "
                          "which the psls package does not install: not available here")
    cadence = settings["sampling_cadence"]
    if cadence % 25:
        raise TaskFailure("specs / sampling_cadence must be a multiple of 25 s for PSLS (got %g)" % cadence)
    seed = settings["master_seed"]
    seed = int(seed) if seed is not None else random.SystemRandom().randrange(1, 2 ** 30)
    settings["master_seed"] = seed
    # PSLS 2 puts the first mid-transit a quarter of a period after its sample 0 (whose time stamp is half
    # an integration plus the camera time shift): simulate a run-in and cut it off so that the first transit
    # falls at t0, as the seed does.
    period = settings["orbital_period"]
    offset = (cadence * 22 / 25 / 2 + 6.25) / 86400
    run_in = (period / 4 - offset - settings["t0"]) % period if settings["enable_transits"] else 0.0
    config_path = os.path.join(ctx.work_dir, "psls.yaml")
    with open(config_path, "w") as handle:
        yaml.safe_dump(_psls_config(settings, run_in + settings["duration"] + 1, seed), handle)
    output = os.path.join(ctx.work_dir, "0012069449.dat")
    _run_psls(config_path, ctx.work_dir)
    if not os.path.exists(output):
        raise TaskFailure("PSLS wrote no light curve (%s)" % output)
    data = np.loadtxt(output, ndmin=2)
    fluxes = 1 + 1e-6 * data[:, 1]
    cadence_days = cadence / 86400
    first = int(round(run_in / cadence_days))
    count = int(settings["duration"] / cadence_days)
    fluxes = fluxes[first:first + count]
    # PSLS's averaged time stamps drift from the nominal cadence (by ~0.06%); its transit model and noise
    # use the nominal one, so the samples are put on it.
    times = np.arange(len(fluxes)) * cadence_days
    if settings["enable_transits"]:
        noise = PLATO_NOISE * (settings["nsr"] / 73) * math.sqrt(25 / cadence)
        statistics = transit_statistics(batman_model(dict(settings, eccentricity=0.0), times), noise)
    else:
        statistics = transit_statistics(np.ones_like(times), 0.0)
    _finish(ctx, settings, times, fluxes, statistics, "psls")
