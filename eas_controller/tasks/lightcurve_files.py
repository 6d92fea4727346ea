"""Light-curve files in the seed's format, so files made by the seed's pipeline read here and back.

A light curve is plain text, gzipped when its name ends in ``.gz``: one sample a line, four columns —
time (seconds from the start), relative flux (1 = the star's mean brightness), flag (0 = good) and
uncertainty. Lines starting with ``#`` are comments, which the seed's reader skips; we keep the facts of
how the curve was made (the synthesis settings, e.g. ``orbital_period``) in one comment line
``# eas-metadata: {json}``, so a transit search can tell whether it recovered the injected planet.
"""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np

METADATA_PREFIX = "# eas-metadata: "


@dataclasses.dataclass
class LightCurve:
    """Times in days (as the seed's ``Lightcurve`` objects hold them), fluxes relative to 1."""

    times: np.ndarray
    fluxes: np.ndarray
    flags: np.ndarray
    uncertainties: np.ndarray
    metadata: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def make(cls, times, fluxes, flags=None, uncertainties=None, metadata=None) -> "LightCurve":
        times = np.asarray(times, dtype=float)
        fluxes = np.asarray(fluxes, dtype=float)
        flags = np.zeros_like(times) if flags is None else np.asarray(flags, dtype=float)
        uncertainties = np.zeros_like(times) if uncertainties is None else np.asarray(uncertainties, dtype=float)
        if not (len(times) == len(fluxes) == len(flags) == len(uncertainties)):
            raise ValueError("times, fluxes, flags and uncertainties differ in length")
        return cls(times, fluxes, flags, uncertainties, dict(metadata or {}))

    def sampling_interval(self) -> float:
        """The typical time step (days): the inter-quartile mean of the steps, rounded to whole seconds."""
        if len(self.times) < 2:
            return 0.0
        steps = np.sort(np.diff(self.times))
        middle = steps[int(len(steps) * 0.25):max(int(len(steps) * 0.75), int(len(steps) * 0.25) + 1)]
        return round(float(np.mean(middle)) * 86400) / 86400

    def truncated(self, maximum_time: float) -> "LightCurve":
        """The samples before ``maximum_time`` (days)."""
        keep = self.times < maximum_time
        return LightCurve(self.times[keep], self.fluxes[keep], self.flags[keep], self.uncertainties[keep],
                          dict(self.metadata))


def _opener(path: str):
    return gzip.open if path.endswith(".gz") else open


def write(path: str, curve: LightCurve) -> None:
    """Write ``curve`` to ``path`` (gzipped if the name ends in .gz)."""
    table = np.column_stack([curve.times * 86400, curve.fluxes, curve.flags, curve.uncertainties])
    with _opener(path)(path, "wt") as handle:
        handle.write(METADATA_PREFIX + json.dumps(plain(curve.metadata), sort_keys=True) + "\n")
        np.savetxt(handle, table, fmt="%.3f %.10f %d %.4e")


def read(path: str) -> LightCurve:
    """Read a light curve written by :func:`write` or by the seed (three or four columns)."""
    metadata: dict = {}
    rows = []
    with _opener(path)(path, "rt") as handle:
        for line in handle:
            if line.startswith(METADATA_PREFIX):
                metadata = json.loads(line[len(METADATA_PREFIX):])
                continue
            if not line.strip() or line.startswith("#"):
                continue
            rows.append(line.split())
    if not rows:
        return LightCurve.make([], [], metadata=metadata)
    width = min(len(row) for row in rows)
    if width < 2:
        raise ValueError("%s: each line needs at least time and flux" % path)
    table = np.array([row[:min(width, 4)] for row in rows], dtype=float)
    columns = table.shape[1]
    return LightCurve.make(
        table[:, 0] / 86400, table[:, 1],
        table[:, 2] if columns > 2 else None, table[:, 3] if columns > 3 else None, metadata,
    )


def plain(value):
    """Metadata as JSON can hold it (numpy numbers become Python ones, infinities a large number)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return 1e8 if value > 0 else (-1e8 if value < 0 else None)
    return value

