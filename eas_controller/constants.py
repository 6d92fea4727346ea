"""Physical and mission constants for task chains, in the units the PLATO pipeline uses.

Task chains describe simulations such as "a planet of two Earth radii on a 30-day orbit"; they refer to
these numbers by name (``constants.Rearth``) instead of repeating literal values. Chains and science codes
written for the PLATO WP36 controller assume its figures and units -- planet sizes in Jupiter radii
(``Rearth`` = 0.0891...), times in days (``day`` = 1, ``month`` = 28, ``year`` = 365.25) -- so
``constants`` has exactly those, while ``constants_si`` offers the same kind of figures in SI units
(metres, seconds, kilograms) for new chains. Both are read-only and support attribute access
(``constants.Rearth``) and item access (``constants['Rearth']``).
"""

import math
from collections.abc import Mapping
from types import MappingProxyType

_AU = 1.495978707e11
_C = 299792458.0
_DAY = 86400.0
_JULIAN_YEAR = 365.25 * _DAY

# (name, value, unit, description): the PLATO pipeline's own figures, types and units, the default
# `constants`. The first nine are exactly the PLATO pipeline's; Rjup and Rsun follow from its radii.
_SEED_JUPITER_RADIUS = 71492e3
_SEED_SUN_RADIUS = 695500e3
CONSTANTS_TABLE = [
    ("day", 1, "days", "Day"),
    ("month", 28, "days", "Month of 28 days"),
    ("year", 365.25, "days", "Julian year"),
    ("sun_radius", _SEED_SUN_RADIUS, "m", "Solar radius"),
    ("earth_radius", 6371e3, "m", "Earth mean radius"),
    ("jupiter_radius", _SEED_JUPITER_RADIUS, "m", "Jupiter equatorial radius"),
    ("phy_AU", 149597870700, "m", "Astronomical unit"),
    ("Rearth", 0.08911486, "Jupiter radii", "Earth radius"),
    ("plato_noise", 0.000315, "relative flux", "PLATO noise in a 25-second cadence pixel, from PSLS"),
    ("Rjup", 1.0, "Jupiter radii", "Jupiter radius"),
    ("Rsun", _SEED_SUN_RADIUS / _SEED_JUPITER_RADIUS, "Jupiter radii", "Solar radius: sun_radius / jupiter_radius"),
]

# (name, value, unit, description): SI units; the single source for `constants_si` and its documentation.
CONSTANTS_SI_TABLE = [
    ("Rearth", 6.3781e6, "m", "Earth equatorial radius (IAU 2015 nominal)"),
    ("Rjup", 7.1492e7, "m", "Jupiter equatorial radius (IAU 2015 nominal)"),
    ("Rsun", 6.957e8, "m", "Solar radius (IAU 2015 nominal)"),
    ("Mearth", 5.9721679e24, "kg", "Earth mass (IAU 2015 nominal GM divided by G)"),
    ("Mjup", 1.8981246e27, "kg", "Jupiter mass (IAU 2015 nominal GM divided by G)"),
    ("Msun", 1.9884099e30, "kg", "Solar mass (IAU 2015 nominal GM divided by G)"),
    ("Lsun", 3.828e26, "W", "Solar luminosity (IAU 2015 nominal)"),
    ("AU", _AU, "m", "Astronomical unit (IAU 2012, exact)"),
    ("pc", _AU * 648000.0 / math.pi, "m", "Parsec (IAU 2015: 648000/pi AU)"),
    ("ly", _C * _JULIAN_YEAR, "m", "Light year (distance light travels in a Julian year)"),
    ("second", 1.0, "s", "Second"),
    ("minute", 60.0, "s", "Minute"),
    ("hour", 3600.0, "s", "Hour"),
    ("day", _DAY, "s", "Day of 86400 s"),
    ("week", 7.0 * _DAY, "s", "Week of 7 days"),
    ("month", _JULIAN_YEAR / 12.0, "s", "Mean Julian month: 365.25/12 days"),
    ("year", _JULIAN_YEAR, "s", "Julian year: 365.25 days"),
    ("G", 6.67430e-11, "m3 kg-1 s-2", "Newtonian constant of gravitation (CODATA 2018)"),
    ("c", _C, "m s-1", "Speed of light in vacuum (exact)"),
    ("plato_noise", 0.000315, "relative flux", "PLATO noise in a 25-second cadence pixel, from PSLS"),
]


class ReadOnlyMapping(Mapping):
    """A Mapping over ``self._values``, which subclasses set once and never change."""

    __slots__ = ()

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)


class Constants(ReadOnlyMapping):
    """Read-only table of named numbers, readable as attributes or items.

    Being a Mapping lets it be passed where dicts are expected
    (``'{Rearth}'.format_map(constants)``, ``dict(constants)``) while
    refusing any modification, so a task chain cannot change a constant.
    """

    __slots__ = ("_values", "_name")

    def __init__(self, values, name="constants"):
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))
        object.__setattr__(self, "_name", name)

    @property
    def table_name(self):
        """The name expressions know this table by (``constants`` or ``constants_si``)."""
        return self._name

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no constant named {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("constants are read-only")

    def __delattr__(self, name):
        raise AttributeError("constants are read-only")

    def __dir__(self):
        return sorted(self._values)

    def __repr__(self):
        return f"<{self._name}: {', '.join(self._values)}>"

    def __reduce__(self):
        return (Constants, (dict(self._values), self._name))


constants = Constants((name, value) for name, value, _unit, _description in CONSTANTS_TABLE)
constants_si = Constants(((name, value) for name, value, _unit, _description in CONSTANTS_SI_TABLE), "constants_si")
