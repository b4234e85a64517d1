"""What a Sentinel-2 scene's numbers mean: its scale and offset, from its metadata or its data, checked.

Users hand over reflectance in several encodings: integers x 10000 (ESA, most exports), the same
with an offset of -1000 DN (processing baseline 04.00 and later, sensed from 2022-01-25), float
reflectance 0..1 (xarray and STAC tools), float DN. Taking one for another gives an image 10000
times too dark or 0.1 too bright that looks valid. :func:`calibrate` decides the scaling of every
band of an S2 scene and says where it came from (the ``scale_source`` catalog column):

1. what the metadata states (:func:`~cloudclear.scenes.files.stated_scale`: a product's XML or
   STAC ``raster:bands``, a band's GDAL scale/offset, per-band or per-file ``*_ADD_OFFSET`` and
   ``QUANTIFICATION_VALUE`` tags);
2. else, for floats, the data: 99 % of the values at most 2 is reflectance 0..1, a median of 20
   or more (and a 99th percentile under 30000) is DN x 10000; anything else is refused (here and
   below, 0 is no data, declared or not);
3. else integers are DN / 10000.

Then the values are checked against the scale: a median reflectance over 2, or 99 % of the values
under 0.01 (reflectance 0..1 stored as DN, a 0/1 mask), is refused; and an integer scene sensed
from 2022-01-25 whose metadata states no offset has its darkest clear pixels looked at: +1000 DN
from the baseline-04.00 offset puts them above 0.09 (L2A) or 0.15 (L1C, whose top-of-atmosphere
blue is brighter) where harmonised values start near 0; such a scene is refused, with how to
state the offset; between the two (or for an unknown level, the L1C bounds) the offset is taken as
none with a warning saying how to state it. A scene refused here is skipped by ``index`` with one
line, never catalogued.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cloudclear.errors import InvalidRasterError
from cloudclear.scenes import FileInfo, SceneDraft
from cloudclear.scenes.files import FileRole, offset_stated, stated_scale

if TYPE_CHECKING:
    import numpy as np

    from cloudclear.catalog.stats import ValueSample

log = logging.getLogger(__name__)

#: First sensing day of processing baseline 04.00, which adds BOA_ADD_OFFSET / RADIO_ADD_OFFSET
#: of -1000 DN to every L1C and L2A product.
OFFSET_SINCE = datetime(2022, 1, 25, tzinfo=timezone.utc)
#: Darkest clear reflectance (1st percentile, blue or coastal band) above which values without a
#: stated offset are taken as offset by +1000 DN: L2A, L1C (and unknown level).
OFFSET_DARK = {"L2A": 0.09, "L1C": 0.15}
#: Below these the values are harmonised (no offset); in between the check is inconclusive.
HARMONISED_DARK = {"L2A": 0.06, "L1C": 0.11}
#: Bands whose darkest clear pixels tell an offset (water, shadow and forest are dark there).
DARK_BANDS = ("B01", "B02", "B03", "B04")
#: Fewest clear pixels in the subsample for the offset check to decide.
MIN_CLEAR = 500


@dataclass(frozen=True)
class Calibration:
    """How every band of a scene becomes reflectance (``DN * scale + offset``), and why.

    Attributes:
        scales: band name -> scale.
        offsets: band name -> offset (reflectance units: -0.1 for -1000 DN).
        source: where the scaling came from ("MTD_MSIL2A.xml", "tags", "data: float reflectance
            0..1", "assumed: DN / 10000"), with what the data check found.
    """

    scales: Mapping[str, float]
    offsets: Mapping[str, float]
    source: str

    @property
    def first(self) -> tuple[float, float]:
        """The first band's (scale, offset): the scene's ``scale`` and ``offset`` columns."""
        band = next(iter(self.scales))
        return self.scales[band], self.offsets[band]


def _pct(values: object, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def calibrate(draft: SceneDraft, infos: Mapping[str, FileInfo], sample: ValueSample | None) -> Calibration:
    """The scaling of every band of an S2 scene, from its metadata or its data, checked.

    Args:
        draft: the scene.
        infos: path -> FileInfo of its files.
        sample: raw values of one band (:class:`~cloudclear.catalog.stats.ValueSample`), or None
            when none was read (the checks are then skipped and the source says so).

    Raises:
        InvalidRasterError: the values do not fit any encoding, or do not fit the stated one;
            the message names the file and what was found.
    """
    import numpy as np

    scales: dict[str, float] = {}
    offsets: dict[str, float] = {}
    sources: list[str] = []
    unstated: list[str] = []
    for band, (path, bidx) in draft.band_sources.items():
        stated = stated_scale(infos[path], bidx)
        if stated is None:
            unstated.append(band)
            continue
        scales[band], offsets[band] = stated[0], stated[1]
        if stated[2] not in sources:
            sources.append(stated[2])

    info = draft.grid
    name = sample.band if sample is not None else next(iter(draft.band_sources))
    path = draft.band_sources[name][0] if name in draft.band_sources else info.path
    dtype = infos[path].dtype if path in infos else info.dtype
    is_float = dtype.startswith("float")
    valid = _data(sample.valid) if sample is not None else np.zeros(0)
    if unstated:
        if name in scales:
            default = (scales[name], offsets[name])
            how = sources[0]
        elif is_float:
            default, how = _float_encoding(path, valid)
        else:
            default, how = (1e-4, 0.0), "assumed: DN / 10000"
        for band in unstated:
            scales[band], offsets[band] = default
        sources.append(how)
    ordered = [b for b in draft.band_sources]
    calib = Calibration({b: scales[b] for b in ordered}, {b: offsets[b] for b in ordered}, "; ".join(sources))
    if sample is None or valid.size == 0:
        return Calibration(calib.scales, calib.offsets, f"{calib.source}; values unchecked (no valid pixel read)")
    checked = _check_range(path, name, valid, calib)
    return _check_offset(draft, infos, sample, calib, checked)


#: Side of the decimated read that decides a float file's encoding.
FLOAT_SAMPLE_SIDE = 512


def float_scale(info: FileInfo, src: Any = None, role: FileRole | None = None) -> FileInfo:
    """A float S2 file whose metadata state no scale, with the scale its data show written as
    its ``QUANTIFICATION_VALUE`` and ``SCALE_SOURCE`` tags (so that detection, statistics and
    every later read agree, and the catalog's file cache keeps the decision).

    ``src`` is the file already open (its metadata read), else the file is opened here; ``role``
    its :func:`~cloudclear.scenes.classify` where known.

    Raises:
        InvalidRasterError: the values fit neither reflectance 0..1 nor DN x 10000.
    """
    import dataclasses

    import rasterio

    from cloudclear.scenes import classify, valid_pixels

    if not info.dtype.startswith("float") or stated_scale(info, 1) is not None:
        return info
    if role is None:
        try:
            role = classify(info)
        except InvalidRasterError:
            return info
    if role.kind != "s2" or not role.bands:
        return info
    bidx = min(role.bands.values())
    side = FLOAT_SAMPLE_SIDE
    shape = (min(side, info.height), min(side, info.width))
    try:
        if src is not None:
            data = src.read(bidx, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        else:
            with rasterio.open(info.path) as opened:
                data = opened.read(bidx, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    except rasterio.errors.RasterioIOError as exc:
        raise InvalidRasterError(f"{info.path}: cannot be read ({exc})") from None
    values = data[valid_pixels(data, info.nodata, "S2")]
    (scale, _), how = _float_encoding(info.path, values)
    tags = info.tags | {"QUANTIFICATION_VALUE": f"{1.0 / scale:g}", "SCALE_SOURCE": how}
    return dataclasses.replace(info, tags=tags)


def _data(values: object) -> np.ndarray:
    """The values that hold data: 0 is optical nodata even where a float file declares none
    (DESIGN.md 3; xarray and GDAL exports fill a tile's empty part with 0), and a tile more than
    half empty must not read as a median of 0."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    return arr[arr != 0]


def _float_encoding(path: str, valid: object) -> tuple[tuple[float, float], str]:
    values = _data(valid)
    if values.size == 0:
        return (1.0, 0.0), "assumed: float reflectance (no valid pixel read)"
    p50, p99 = _pct(values, 50), _pct(values, 99)
    if p99 <= 2.0:
        return (1.0, 0.0), "data: float reflectance 0..1"
    if p50 >= 20.0 and p99 <= 30000.0:
        return (1e-4, 0.0), "data: float DN x 10000"
    raise InvalidRasterError(
        f"{path}: float values fit neither reflectance 0..1 nor DN x 10000 (median {p50:.4g}, 99th "
        f"percentile {p99:.4g}); state the scale on the bands (gdal_edit.py -scale S -offset O)"
    )


def _check_range(path: str, band: str, valid: object, calib: Calibration) -> str:
    scale, offset = calib.scales[band], calib.offsets[band]
    import numpy as np

    p50, p99 = np.percentile(np.asarray(valid, dtype=np.float64), [50, 99])
    refl_50 = float(p50) * scale + offset
    refl_99 = float(p99) * scale + offset
    how = f"{calib.source} ({scale:g} x DN {offset:+g})"
    if refl_50 > 2.0:
        raise InvalidRasterError(
            f"{path}: {band} reflectance is too large for {how}: median {refl_50:.4g}, 99th percentile "
            f"{refl_99:.4g} (expected 0..~1.5); state the right scale (gdal_edit.py -scale)"
        )
    if refl_99 < 0.01:
        raise InvalidRasterError(
            f"{path}: {band} reflectance looks 10000 times too small for {how}: median {refl_50:.3g}, "
            f"99th percentile {refl_99:.3g}; are the values reflectance 0..1 stored with a x 10000 "
            f"scale, or a mask?"
        )
    return f"median reflectance {refl_50:.3f}"


def _check_offset(
    draft: SceneDraft, infos: Mapping[str, FileInfo], sample: ValueSample, calib: Calibration, checked: str
) -> Calibration:
    path, bidx = draft.band_sources[sample.band]
    info = infos.get(path, draft.grid)
    level = level_of(draft)
    needs = draft.datetime >= OFFSET_SINCE and not info.dtype.startswith("float") and not offset_stated(info, bidx)
    note = checked
    if needs:
        scale, offset = calib.scales[sample.band], calib.offsets[sample.band]
        if sample.band not in DARK_BANDS:
            note += f"; offset unchecked ({sample.band} is no blue/green/red band)"
        elif sample.clear.size < MIN_CLEAR:
            note += f"; offset unchecked (only {sample.clear.size} clear pixels sampled)"
        else:
            dark = _pct(sample.clear, 1)
            refl = dark * scale + offset
            if refl >= OFFSET_DARK.get(level, OFFSET_DARK["L1C"]):
                raise InvalidRasterError(
                    f"{path}: sensed {draft.datetime:%Y-%m-%d} (processing baseline 04.00 adds 1000 DN) with no "
                    f"BOA_ADD_OFFSET / RADIO_ADD_OFFSET stated, and its darkest clear {sample.band} pixels are "
                    f"at {dark:.0f} DN ({refl:.3f}): the offset looks present; state it "
                    f"(gdal_edit.py -mo BOA_ADD_OFFSET=-1000, or =0 if the values are harmonised) or index "
                    f"the SAFE product"
                )
            if refl < HARMONISED_DARK.get(level, HARMONISED_DARK["L1C"]):
                note += f"; no offset (darkest clear {sample.band} at {dark:.0f} DN: harmonised)"
            else:
                note += f"; offset inconclusive (darkest clear {sample.band} at {dark:.0f} DN), taken as none"
                log.warning(
                    "%s: sensed %s (processing baseline 04.00 adds 1000 DN) with no BOA_ADD_OFFSET stated; its "
                    "darkest clear %s pixels (%.0f DN, %.3f) do not tell whether the offset is there%s: taken as "
                    "none; state it (gdal_edit.py -mo BOA_ADD_OFFSET=-1000, or =0 if the values are harmonised)",
                    path,
                    f"{draft.datetime:%Y-%m-%d}",
                    sample.band,
                    dark,
                    refl,
                    f" ({level})" if level else " (processing level unknown)",
                )
    return Calibration(calib.scales, calib.offsets, f"{calib.source}; {note}")


#: A processing level as products, exports and names write it: ``L2A``, ``Level-2A`` (the SAFE
#: XML, and GDAL's SENTINEL2 driver, whose exports keep it as PROCESSING_LEVEL), ``MSIL2A``,
#: ``S2MSI2A`` (the product type).
_LEVEL_RE = re.compile(r"L(?:EVEL)?[-_ ]?(2A|1C)|MSI(2A|1C)")


def level_of(draft: SceneDraft) -> str:
    """A scene's processing level ("L1C", "L2A") from its tags or names, "" when none says.

    The PROCESSING_LEVEL tag first, then PRODUCT, then the file name."""
    info = draft.grid
    for text in (info.tags.get("PROCESSING_LEVEL", ""), info.tags.get("PRODUCT", ""), info.stem):
        found = _LEVEL_RE.search(text.upper())
        if found:
            return "L" + (found.group(1) or found.group(2))
    return ""
