"""The series as a product: the per-date outputs of a place as a STAC catalog and a Zarr store.

``infer`` writes one GeoTIFF per date (and its ``_status.tif`` sidecar). :func:`write_series`
turns any set of them into what a user opens as a series in one line:

- **STAC** (``DST/catalog.json``): a STAC 1.0 Catalog with one Collection per place
  (``DST/S2_T31UFQ_series/collection.json``) and one Item per output (``items/<id>.json``: date,
  footprint in lon/lat, ``proj:*`` grid, ``eo:bands`` / ``raster:bands``, the status sidecar as a
  classified asset), written by :mod:`cloudclear.inference.series_stac`. Chosen because it is how
  the ecosystem finds rasters: odc-stac loads it (stackstac wants single-band assets, which the
  four-band outputs are not), QGIS browses it, and so does cloudclear's own item reader
  (:func:`cloudclear.scenes.stac.read`: bands, scale, tile, date). It points at the GeoTIFFs
  where they are, copying nothing::

      import odc.stac, pystac
      items = pystac.Catalog.from_file("out/catalog.json").get_items(recursive=True)
      ds = odc.stac.load(items, chunks={})  # lazy: B02.. and status as (time, y, x), uint16 DN

- **Zarr** (``DST/S2_T31UFQ_series.zarr``): one store per place holding the whole series, which
  xarray opens lazily in one line with a real time axis, something a VRT cannot hold (a VRT
  stacks bands, not dates, and loses the dates)::

      ds = xr.open_zarr("out/S2_T31UFQ_series.zarr")   # dask-backed, nothing read yet
      ds.reflectance.sel(band="B04", time="2021-05")   # float reflectance, NaN where nodata
      ds.rio.crs                                       # with rioxarray installed (not needed)

  Variables: ``reflectance`` (time, band, y, x) stored as the outputs' uint16 DN, with the CF
  encoding ``scale_factor`` 0.0001 and ``_FillValue`` 0 so xarray decodes reflectance (float64:
  JSON attributes carry no float32) and NaN; ``status`` (time, y, x) uint8, the sidecar's classes
  (0 nodata, 1 observed, 2 reconstructed; 255 unknown for a date without a sidecar); coordinates
  ``time``, ``band``, ``y`` / ``x`` (pixel centres in the CRS), per-date ``method``,
  ``processing_level`` and ``source``, and ``spatial_ref`` (``crs_wkt``, ``GeoTransform`` and
  the CF grid-mapping attributes, which data variables name in ``grid_mapping``: the convention
  rioxarray and GDAL read). Chunks are (1, 1, 512, 512). The store is Zarr format 2 with
  consolidated metadata: zarr-python 2 and 3, xarray and GDAL all open it in one read.

The DN are copied as they are (no decode / encode round trip), strip by strip: peak memory is one
512-row strip of one date, whatever the tile size. Each store and each collection folder is written
to a temporary beside its target and renamed into place (:func:`cloudclear.outputs.atomic_output`),
so a rerun replaces them whole, and writing the same outputs again gives the same bytes. Targets
that exist and were not written by cloudclear are refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloudclear.errors import (
    GridError,
    InvalidRasterError,
    MissingDateError,
    NoInputsError,
    OutputError,
    OutputExistsError,
    SceneNotFoundError,
)
from cloudclear.gapfill import PixelStatus
from cloudclear.gdal import gdal_env
from cloudclear.inference.writer import QUANTIFICATION, ROLE_OUTPUT, ROLE_STATUS, ROLE_TAG, status_path_for
from cloudclear.outputs import atomic_output
from cloudclear.scenes.scene import grid_name, normalise_tile, place_label

#: The series products, name -> what it is (the CLI's choices and help text).
SERIES_KINDS: dict[str, str] = {
    "stac": "a STAC 1.0 catalog of the outputs (DST/catalog.json) for odc-stac, pystac, QGIS",
    "zarr": "one Zarr store per place (DST/S2_T{tile}_series.zarr): xarray.open_zarr, lazy, with a time axis",
}
#: Zarr chunk edge (pixels): one chunk per 512 x 512 block of the GeoTIFFs.
CHUNK = 512
#: The status of a pixel of a date whose output has no sidecar (the DN are there, their origin is not).
STATUS_UNKNOWN = 255
#: Marks the files this module writes, so that a rerun replaces only its own.
MARK = "cloudclear:series"


@dataclass(frozen=True)
class SeriesOutput:
    """What one infer output is, read from its tags and grid.

    Attributes:
        path: the reconstruction (absolute).
        status: its ``_status.tif`` sidecar, or None when there is none.
        when: its date (the ``DATETIME`` tag, UTC).
        place: the tile id (``TILE_ID``), else the name of its grid.
        method, level: the ``CLOUDCLEAR_METHOD`` and ``PROCESSING_LEVEL`` tags ("" when absent).
        bands: band descriptions.
        crs: CRS as WKT; epsg: its EPSG code, or None.
        transform: affine coefficients (a, b, c, d, e, f); width, height: size in pixels.
        cog: whether the file is a cloud-optimized GeoTIFF.
    """

    path: Path
    status: Path | None
    when: datetime
    place: str
    method: str
    level: str
    bands: tuple[str, ...]
    crs: str
    epsg: int | None
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    cog: bool

    @property
    def grid(self) -> tuple[str, tuple[float, ...], int, int]:
        return (self.crs, tuple(round(v, 6) for v in self.transform), self.width, self.height)


@dataclass(frozen=True)
class SeriesPlace:
    """The series written for one place: its outputs in date order and the files made of them."""

    place: str
    outputs: tuple[SeriesOutput, ...]
    zarr: Path | None = None
    collection: Path | None = None

    @property
    def label(self) -> str:
        """The place as file names show it ("T31UFQ", or the grid name)."""
        return place_label(self.place)

    def to_dict(self) -> dict[str, Any]:
        return {
            "place": self.place,
            "dates": [o.when.isoformat() for o in self.outputs],
            "bands": list(self.outputs[0].bands),
            "outputs": [str(o.path) for o in self.outputs],
            "zarr": str(self.zarr) if self.zarr else None,
            "collection": str(self.collection) if self.collection else None,
        }


@dataclass(frozen=True)
class SeriesResult:
    """What :func:`write_series` wrote: one :class:`SeriesPlace` per place and the STAC catalog."""

    places: tuple[SeriesPlace, ...]
    catalog: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"catalog": str(self.catalog) if self.catalog else None, "places": [p.to_dict() for p in self.places]}


def write_series(
    outputs: Sequence[str | os.PathLike[str]],
    dst: str | os.PathLike[str],
    kinds: Sequence[str] = ("stac", "zarr"),
    *,
    progress: bool = False,
    chunk: int = CHUNK,
) -> SeriesResult:
    """Write the series of ``outputs`` (infer's GeoTIFFs) into the folder ``dst``.

    Outputs are grouped by place (``TILE_ID`` tag, else their grid) and sorted by date
    (``DATETIME`` tag); status sidecars are found beside them by name (one may be missing). A
    sidecar listed among ``outputs`` beside its reconstruction is skipped. Existing series of the
    same places are replaced whole; the catalog keeps the collections of other places.

    Args:
        outputs: infer output GeoTIFFs.
        dst: the folder to write into (made when its parent exists).
        kinds: which products, keys of :data:`SERIES_KINDS`.
        progress: a progress bar over the strips written (stderr).
        chunk: the Zarr chunk edge in pixels (also the strip height).

    Raises:
        NoInputsError: no outputs.
        SceneNotFoundError: an output does not exist.
        InvalidRasterError: a file is no cloudclear reconstruction, lacks a date, or outputs of
            one place differ in bands or share a date.
        GridError: outputs (or a sidecar) of one place lie on different grids.
        OutputError: an unknown kind; a target that exists and is not a cloudclear series; a
            write failed (what was there before is untouched).
    """
    unknown = [k for k in kinds if k not in SERIES_KINDS]
    if unknown or not kinds:
        raise OutputError(
            f"unknown series kind {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(SERIES_KINDS)}"
        )
    if chunk < 16:
        raise OutputError(f"series chunk {chunk} px is too small; use 16 or more (default {CHUNK})")
    dst = Path(dst).expanduser().absolute()
    with gdal_env("infer"):
        groups = group_outputs(outputs)
        try:
            dst.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{dst}: cannot write series ({exc.strerror or exc})") from None
        places = [SeriesPlace(place, tuple(outs)) for place, outs in groups.items()]
        catalog = None
        if "zarr" in kinds:
            bar = _bar(places, chunk) if progress else None
            try:
                places = [
                    SeriesPlace(p.place, p.outputs, zarr=write_zarr(p, dst / f"S2_{p.label}_series.zarr", chunk, bar))
                    for p in places
                ]
            finally:
                if bar is not None:
                    bar.close()
        if "stac" in kinds:
            from cloudclear.inference.series_stac import write_stac

            places, catalog = write_stac(places, dst)
    return SeriesResult(tuple(places), catalog)


# -- reading the outputs ---------------------------------------------------------------------------


def read_output(path: str | os.PathLike[str]) -> SeriesOutput:
    """Describe one infer output from its tags and grid.

    Raises:
        SceneNotFoundError: no file at ``path``.
        InvalidRasterError: not a readable cloudclear reconstruction (uint16, nodata 0, tagged
            ``CLOUDCLEAR_ROLE=reconstruction``).
        MissingDateError: no ``DATETIME`` tag.
    """
    import rasterio

    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise SceneNotFoundError(f"{path}: no such output")
    try:
        with rasterio.open(path) as ds:
            tags, crs, transform = ds.tags(), ds.crs, ds.transform
            dtypes, nodata, descriptions = ds.dtypes, ds.nodata, ds.descriptions
            width, height = ds.width, ds.height
            cog = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "").upper() == "COG"
    except rasterio.RasterioIOError as exc:
        raise InvalidRasterError(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from None
    role = tags.get(ROLE_TAG)
    if role != ROLE_OUTPUT:
        what = "a status sidecar" if role == ROLE_STATUS else f"tagged {ROLE_TAG}={role}" if role else "untagged"
        raise InvalidRasterError(f"{path}: not a cloudclear reconstruction ({what}); pass infer's output GeoTIFFs")
    if set(dtypes) != {"uint16"} or nodata != 0:
        raise InvalidRasterError(f"{path}: not a cloudclear reconstruction (dtype {dtypes[0]}, nodata {nodata})")
    if crs is None:
        raise InvalidRasterError(f"{path}: has no CRS")
    bands = tuple(d or f"band{i}" for i, d in enumerate(descriptions, 1))
    wkt, epsg = crs.to_wkt(), crs.to_epsg()
    coeffs = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
    if coeffs[1] or coeffs[3]:
        raise InvalidRasterError(f"{path}: a rotated grid; a series needs north-up outputs")
    place = normalise_tile(tags.get("TILE_ID")) or grid_name(
        f"EPSG:{epsg}" if epsg else wkt, coeffs, width, height, epsg
    )
    status = status_path_for(path)
    return SeriesOutput(
        path=path,
        status=status if status.is_file() else None,
        when=_parse_date(path, tags.get("DATETIME")),
        place=place,
        method=tags.get("CLOUDCLEAR_METHOD", ""),
        level=tags.get("PROCESSING_LEVEL", ""),
        bands=bands,
        crs=wkt,
        epsg=epsg,
        transform=coeffs,
        width=width,
        height=height,
        cog=cog,
    )


def _parse_date(path: Path, text: str | None) -> datetime:
    if not text:
        raise MissingDateError(f"{path}: no DATETIME tag; is it an output of cloudclear infer?")
    t = text.strip().replace("Z", "+00:00")
    if len(t) >= 19 and t[4] == ":" and t[7] == ":":  # TIFF's "YYYY:MM:DD HH:MM:SS"
        t = f"{t[:4]}-{t[5:7]}-{t[8:10]}T{t[11:]}"
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise MissingDateError(f"{path}: DATETIME tag {text!r} is no date") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def group_outputs(outputs: Sequence[str | os.PathLike[str]]) -> dict[str, list[SeriesOutput]]:
    """Outputs by place (sorted by name), each place's in date order, checked to make one series.

    Raises:
        see :func:`write_series`.
    """
    import rasterio

    paths = list(dict.fromkeys(Path(p).expanduser().absolute() for p in outputs))
    if not paths:
        raise NoInputsError("no outputs to make a series of")
    listed = set(paths)
    read = []
    for p in paths:
        if p.stem.endswith("_status") and p.with_name(p.stem[: -len("_status")] + p.suffix) in listed:
            continue  # a glob of the output folder: the sidecar comes with its reconstruction
        read.append(read_output(p))
    groups: dict[str, list[SeriesOutput]] = {}
    for o in read:
        groups.setdefault(o.place, []).append(o)
    for place, outs in groups.items():
        outs.sort(key=lambda o: (o.when, str(o.path)))
        first = outs[0]
        for o in outs[1:]:
            if o.grid != first.grid:
                raise GridError(
                    f"{o.path}: place {place} on another grid than {first.path} "
                    f"({_describe_grid(o)} vs {_describe_grid(first)}); a series needs one grid"
                )
            if o.bands != first.bands:
                raise InvalidRasterError(
                    f"{o.path}: bands {','.join(o.bands)} differ from {first.path}'s {','.join(first.bands)}; "
                    f"a series needs the same bands at every date"
                )
        for a, b in zip(outs, outs[1:], strict=False):
            if a.when == b.when:
                raise InvalidRasterError(
                    f"{b.path}: same place ({place}) and date ({b.when:%Y-%m-%dT%H:%M:%S}) as {a.path}; "
                    f"a series holds one output per date"
                )
        for o in outs:
            if o.status is None:
                continue
            with rasterio.open(o.status) as ds:
                t = ds.transform
                same = ds.crs is not None and ds.crs.to_wkt() == o.crs and (ds.width, ds.height) == (o.width, o.height)
                same = same and all(abs(x - y) < 1e-6 for x, y in zip(tuple(t)[:6], o.transform, strict=True))
            if not same:
                raise GridError(f"{o.status}: the status sidecar lies on another grid than {o.path}")
    return dict(sorted(groups.items()))


def _describe_grid(o: SeriesOutput) -> str:
    code = f"EPSG:{o.epsg}" if o.epsg else "a custom CRS"
    return f"{code}, origin {o.transform[2]:.2f} {o.transform[5]:.2f}, {o.width} x {o.height} px"


def _bar(places: Sequence[SeriesPlace], chunk: int) -> Any:
    from tqdm import tqdm

    total = sum(len(p.outputs) * -(-p.outputs[0].height // chunk) for p in places)
    return tqdm(total=total, unit="strip", desc="series", leave=False)


# -- Zarr ------------------------------------------------------------------------------------------


def write_zarr(place: SeriesPlace, path: Path, chunk: int = CHUNK, bar: Any = None) -> Path:
    """Write the Zarr store of one place at ``path``, replacing a cloudclear store there.

    The store's metadata comes from a lazy template (xarray, nothing computed); the pixels are
    then copied strip by strip, ``chunk`` rows of one date at a time, straight into the arrays.
    """
    import numpy as np
    from rasterio.windows import Window

    refuse_foreign(path, _is_our_zarr, "Zarr store")
    outs = place.outputs
    first = outs[0]
    with atomic_output(path, overwrite=True, what="series") as tmp:
        ds, encoding = _template(place, chunk)
        ds.to_zarr(tmp, mode="w", compute=False, encoding=encoding, consolidated=True, **_zarr_format())
        reflectance, status = _open_arrays(tmp)
        for t, o in enumerate(outs):
            for r0 in range(0, first.height, chunk):
                win = Window(0, r0, first.width, min(chunk, first.height - r0))
                dn = _read_strip(o.path, win)
                reflectance[t, :, r0 : r0 + dn.shape[1], :] = dn
                if o.status is not None:
                    st = _read_strip(o.status, win)[0]
                else:
                    st = np.where(dn.any(axis=0), np.uint8(STATUS_UNKNOWN), np.uint8(PixelStatus.NODATA))
                status[t, r0 : r0 + dn.shape[1], :] = st
                if bar is not None:
                    bar.update(1)
    return path


def _read_strip(path: Path, window: Any) -> Any:
    """One strip of every band. The file is opened for each strip: closing it drops its blocks from
    GDAL's block cache, which would otherwise fill up to the operation's cache size (every block is
    read once, so the cache only holds memory) rather than one strip."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.read(window=window)
    except rasterio.RasterioIOError as exc:
        raise InvalidRasterError(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from None


def _zarr_format() -> dict[str, Any]:
    import zarr

    return {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}


def _open_arrays(path: Path) -> tuple[Any, Any]:
    import zarr

    group = zarr.open_group(str(path), mode="r+", **_zarr_format())
    return group["reflectance"], group["status"]


def _compressor() -> dict[str, Any]:
    import numcodecs
    import zarr

    codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    return {"compressors": [codec]} if int(zarr.__version__.split(".")[0]) >= 3 else {"compressor": codec}


def _template(place: SeriesPlace, chunk: int) -> tuple[Any, dict[str, Any]]:
    """The store as a lazy xarray Dataset (dask zeros, never computed) and its encoding."""
    import dask.array as da
    import numpy as np
    import xarray as xr
    from pyproj import CRS

    outs = place.outputs
    first = outs[0]
    n, h, w = len(outs), first.height, first.width
    a, _, c, _, e, f = first.transform
    crs = CRS.from_wkt(first.crs)
    ch = (min(chunk, h), min(chunk, w))
    try:
        cf = crs.to_cf()
    except Exception:  # noqa: BLE001 - pyproj cannot express every CRS in CF; the WKT is enough
        cf = {}
    spatial_ref = xr.DataArray(
        np.int32(0),
        attrs={
            **cf,
            "crs_wkt": first.crs,
            "spatial_ref": first.crs,
            "GeoTransform": " ".join(f"{v!r}" for v in (c, a, 0.0, f, 0.0, e)),
        },
    )
    x_attrs, y_attrs = _axis_attrs(crs)
    present = sorted(
        {int(s) for s in PixelStatus} | ({STATUS_UNKNOWN} if any(o.status is None for o in outs) else set())
    )
    names = {int(s): s.name.lower() for s in PixelStatus} | {STATUS_UNKNOWN: "unknown"}
    grid_mapping = {"grid_mapping": "spatial_ref"}
    data_vars = {
        "reflectance": (
            ("time", "band", "y", "x"),
            da.zeros((n, len(first.bands), h, w), dtype="uint16", chunks=(1, 1, *ch)),
            {
                "long_name": f"reflectance ({first.level or 'unknown'} level) reconstructed by cloudclear",
                "units": "1",
                **grid_mapping,
            },
        ),
        "status": (
            ("time", "y", "x"),
            da.zeros((n, h, w), dtype="uint8", chunks=(1, *ch)),
            {
                "long_name": "what each pixel is",
                "flag_values": present,
                "flag_meanings": " ".join(names[v] for v in present),
                **grid_mapping,
            },
        ),
    }
    coords = {
        "time": ("time", np.array([o.when.replace(tzinfo=None) for o in outs], dtype="datetime64[ns]")),
        "band": ("band", np.array(first.bands)),
        "y": ("y", f + e * (np.arange(h) + 0.5), y_attrs),
        "x": ("x", c + a * (np.arange(w) + 0.5), x_attrs),
        "method": ("time", np.array([o.method for o in outs])),
        "processing_level": ("time", np.array([o.level for o in outs])),
        "source": ("time", np.array([o.path.name for o in outs])),
        "spatial_ref": spatial_ref,
    }
    attrs = {
        "title": f"cloudclear series of {place.label}",
        "Conventions": "CF-1.8",
        "source": "cloudclear infer",
        "cloudclear_series": place.place,
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    comp = _compressor()
    encoding = {
        "reflectance": {
            "dtype": "uint16",
            "scale_factor": 1.0 / QUANTIFICATION,
            "_FillValue": 0,
            "chunks": (1, 1, *ch),
            **comp,
        },
        "status": {"dtype": "uint8", "_FillValue": None, "chunks": (1, *ch), **comp},
        "time": {"units": "seconds since 1970-01-01", "dtype": "int64", "calendar": "proleptic_gregorian"},
    }
    return ds, encoding


def _axis_attrs(crs: Any) -> tuple[dict[str, str], dict[str, str]]:
    if crs.is_geographic:
        return (
            {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
            {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
        )
    unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
    return (
        {"standard_name": "projection_x_coordinate", "long_name": "x of pixel centres", "units": unit},
        {"standard_name": "projection_y_coordinate", "long_name": "y of pixel centres", "units": unit},
    )


def _is_our_zarr(path: Path) -> bool:
    for meta in (path / ".zattrs", path / "zarr.json"):
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        attrs = doc.get("attributes", doc) if isinstance(doc, dict) else {}
        if isinstance(attrs, dict) and "cloudclear_series" in attrs:
            return True
    return False


def refuse_foreign(path: Path, ours: Any, what: str) -> None:
    """Refuse a target that exists and that ``ours(path)`` says cloudclear did not write."""
    if (path.exists() or path.is_symlink()) and not ours(path):
        raise OutputExistsError(
            f"{path}: exists and is not a {what} cloudclear wrote; remove it or write the series elsewhere"
        )
