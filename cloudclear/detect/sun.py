"""Where the sun was: solar angles from scene metadata, or computed from time and place.

Shadows are found by projecting clouds away from the sun, so the detector needs the solar
azimuth (and the zenith, to turn cloud heights into distances). Sentinel-2 products carry mean
angles (``MEAN_SOLAR_AZIMUTH_ANGLE`` in Earth Engine exports, ``Mean_Sun_Angle`` in the L1C
metadata); plain GeoTIFFs usually carry none, and then the position is computed from the
acquisition time and the scene centre with the NOAA solar equations (accurate to about 0.5 deg,
far better than shadow matching needs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

#: Tag pairs (zenith, azimuth) that products use for the mean solar angles, best first.
ANGLE_TAGS: tuple[tuple[str, str], ...] = (
    ("MEAN_SOLAR_ZENITH_ANGLE", "MEAN_SOLAR_AZIMUTH_ANGLE"),
    ("MEAN_SUN_ZENITH_ANGLE", "MEAN_SUN_AZIMUTH_ANGLE"),
    ("SUN_ZENITH", "SUN_AZIMUTH"),
    ("SOLAR_ZENITH_ANGLE", "SOLAR_AZIMUTH_ANGLE"),
    ("SUN_ZENITH_ANGLE", "SUN_AZIMUTH_ANGLE"),
)
_ELEVATION_TAGS = ("SUN_ELEVATION", "SOLAR_ELEVATION")

#: Sentinel-2 crosses the equator at 10:30 local solar time (descending node).
S2_LOCAL_TIME_H = 10.5


@dataclass(frozen=True)
class SunAngles:
    """Solar zenith and azimuth in degrees (azimuth clockwise from north), and where they came from.

    ``source`` is "parameters", "tag:KEY", "computed" (from time and place) or "image" (from the
    offset between clouds and dark pixels, when nothing else is known).
    """

    zenith: float
    azimuth: float
    source: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.zenith < 90.0:
            raise ValueError(f"sun zenith {self.zenith} deg is not in [0, 90)")
        object.__setattr__(self, "azimuth", self.azimuth % 360.0)


def from_tags(tags: Mapping[str, str]) -> SunAngles | None:
    """Mean solar angles stored in a product's tags, if any."""
    upper = {k.upper(): v for k, v in tags.items()}
    for zk, ak in ANGLE_TAGS:
        if zk in upper and ak in upper:
            try:
                return SunAngles(float(upper[zk]), float(upper[ak]), f"tag:{zk}")
            except ValueError:
                continue
    for ek in _ELEVATION_TAGS:
        az = upper.get("SUN_AZIMUTH") or upper.get("SOLAR_AZIMUTH")
        if ek in upper and az:
            try:
                return SunAngles(90.0 - float(upper[ek]), float(az), f"tag:{ek}")
            except ValueError:
                continue
    return None


def solar_position(when: datetime, lon: float, lat: float) -> SunAngles:
    """Solar zenith and azimuth at a UTC time and place (NOAA general solar position equations).

    A datetime at exactly midnight UTC is taken as a date without a time and moved to Sentinel-2's
    10:30 local solar overpass at ``lon``.

    Args:
        when: acquisition time; naive values are read as UTC.
        lon: longitude in degrees east.
        lat: latitude in degrees north.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    when = when.astimezone(timezone.utc)
    if (when.hour, when.minute, when.second, when.microsecond) == (0, 0, 0, 0):
        when = when + timedelta(hours=S2_LOCAL_TIME_H - lon / 15.0)
    day = when.timetuple().tm_yday
    hours = when.hour + when.minute / 60.0 + when.second / 3600.0
    year_days = 366 if when.year % 4 == 0 and (when.year % 100 != 0 or when.year % 400 == 0) else 365
    g = 2.0 * math.pi / year_days * (day - 1 + (hours - 12.0) / 24.0)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    true_solar_min = hours * 60.0 + eqtime + 4.0 * lon
    hour_angle = math.radians(true_solar_min / 4.0 - 180.0)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    zen = math.acos(max(-1.0, min(1.0, cos_zen)))
    # Azimuth clockwise from north, from the east and north components of the sun direction.
    east = -math.sin(hour_angle) * math.cos(decl)
    north = math.cos(phi) * math.sin(decl) - math.sin(phi) * math.cos(decl) * math.cos(hour_angle)
    az = math.degrees(math.atan2(east, north))
    zenith = math.degrees(zen)
    if zenith >= 90.0:
        raise ValueError(f"the sun is below the horizon at {when.isoformat()} ({lon:.3f}E {lat:.3f}N)")
    return SunAngles(zenith, az, "computed")
