"""The one scene reader: a scene's bands and mask on a grid, with validity, classes and physical units.

Every stage that looks at a scene's pixels (catalog statistics, sampling, inference, detection)
reads them here, so that they agree on what a pixel holds:

- *what to read* is a :class:`ReadSpec` (band files, per-band scale / offset / nodata, units,
  mask), made from a catalog :class:`~cloudclear.scenes.Scene`, an acquisition made from one
  (:meth:`ReadSpec.of`), or the files of a scene being indexed (:meth:`ReadSpec.from_files`);
- a :class:`SceneReader` reads rows or a window of it on a :class:`~cloudclear.gridio.Grid`
  through :class:`~cloudclear.gridio.GridReader` (directly when a file lies on the grid, warped
  otherwise: bands bilinear, the mask nearest) and returns :class:`Pixels`;
- :class:`Pixels` holds the raw values, per-band validity (:func:`~cloudclear.scenes.valid_pixels`:
  finite and not nodata, 0 for S2 integers without a declared nodata), the decoded mask classes
  (:class:`~cloudclear.masks.MaskClass`, NODATA wherever a band is invalid) and the one definition
  of *clear*: valid and of a class in :data:`~cloudclear.masks.CLEAR_CLASSES` (every valid pixel
  when the scene has no mask), after the reader's :class:`~cloudclear.masks.ClearPolicy` (buffer,
  unclassified, snow; the default changes nothing) was applied to the mask's classes;
- :func:`to_physical` turns raw values into reflectance (``DN * scale + offset``) or S1 dB
  (``10 log10`` of the scaled value when the scene is in linear power, floored at 1e-6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cloudclear import masks
from cloudclear.errors import GridError, MaskError
from cloudclear.gridio import Grid, GridReader
from cloudclear.scenes.files import reflectance_scale, valid_pixels

if TYPE_CHECKING:
    from cloudclear.scenes.files import FileInfo


class Opener(Protocol):
    """Opens one file's bands on a grid (see :class:`~cloudclear.gridio.GridReader`).

    Sampling passes its per-thread cache of open files; the default opens a new reader. An opener
    may tell what a file holds beyond a grid unopened (``room(path, grid, halo)`` as :func:`_room`,
    None: unknown), so that a mask read with a halo is opened once, on the grid grown by that room.
    """

    def __call__(
        self, path: str, indexes: tuple[int, ...], grid: Grid, resampling: str, nodata: float | None, *, coverage: bool
    ) -> GridReader: ...


#: Resampling of band values and of mask classes when a file must be warped onto the grid.
BAND_RESAMPLING = "bilinear"
MASK_RESAMPLING = "nearest"


@dataclass(frozen=True)
class BandRead:
    """One band to read: where it is and how its numbers become physical values.

    Attributes:
        path: the file.
        band: 1-based band index in it.
        scale: ``DN * scale + offset`` is the physical value.
        offset: see ``scale``.
        nodata: the band's nodata value, or None.
    """

    path: str
    band: int
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None


class _SceneLike(Protocol):
    """A :class:`~cloudclear.scenes.Scene` or an acquisition made from one (read-only fields)."""

    @property
    def sensor(self) -> str: ...
    @property
    def bands(self) -> Sequence[str]: ...
    @property
    def sources(self) -> Any: ...  # a Scene's name -> (path, band) mapping, an acquisition's pairs
    @property
    def scale(self) -> float | Sequence[float]: ...
    @property
    def offset(self) -> float | Sequence[float]: ...
    @property
    def nodata(self) -> float | None: ...
    @property
    def units(self) -> str: ...
    @property
    def mask(self) -> masks.MaskBand | None: ...


@dataclass(frozen=True)
class ReadSpec:
    """What to read of one scene.

    Attributes:
        sensor: "S2" or "S1" (S2 integer bands without a declared nodata use 0 as nodata).
        names: band names, in the order read.
        bands: one :class:`BandRead` per name.
        units: "reflectance" (S2), "dB" or "linear" (S1): linear is converted to dB.
        mask: the mask band, or None (then every valid pixel is clear).
        detected: the built-in detector's mask of a scene that also has ``mask`` (``index`` made it),
            or None; how the two combine is the reader's :class:`~cloudclear.masks.ClearPolicy`.
    """

    sensor: str
    names: tuple[str, ...]
    bands: tuple[BandRead, ...]
    units: str = "reflectance"
    mask: masks.MaskBand | None = None
    detected: masks.MaskBand | None = None

    @classmethod
    def of(cls, scene: _SceneLike, bands: Sequence[str] | None = None, *, mask: bool = True) -> ReadSpec:
        """The spec of a catalog :class:`~cloudclear.scenes.Scene` or an acquisition made from one.

        Args:
            scene: a Scene (``sources`` maps band name -> (path, band)) or an acquisition
                (``bands`` names and ``sources`` (path, band) pairs in the same order).
            bands: the bands to read (default: all of the scene's, or the acquisition's).
            mask: read the scene's mask (False: classes from validity alone).

        Raises:
            KeyError: the scene lacks one of ``bands``.
        """
        names = tuple(scene.bands if bands is None else bands)
        if isinstance(scene.sources, Mapping):
            pairs = [tuple(scene.sources[b]) for b in names]
        else:
            by_name = dict(zip(scene.bands, scene.sources, strict=True))
            pairs = [tuple(by_name[b]) for b in names]
        index = {b: i for i, b in enumerate(scene.bands)}
        scaling = [per_band(scene, index.get(name, 0), name) for name in names]
        reads = tuple(
            BandRead(str(p), int(b), sc, off, scene.nodata) for (p, b), (sc, off) in zip(pairs, scaling, strict=True)
        )
        detected = getattr(scene, "detected", None) if mask else None
        return cls(scene.sensor, names, reads, scene.units, scene.mask if mask else None, detected)

    @classmethod
    def from_files(
        cls,
        sensor: str,
        sources: Mapping[str, tuple[str, int]],
        infos: Mapping[str, FileInfo],
        *,
        units: str = "reflectance",
        mask: masks.MaskBand | None = None,
        detected: masks.MaskBand | None = None,
    ) -> ReadSpec:
        """The spec of a scene still being indexed, from its files' metadata.

        Each band takes its own file's nodata and, for S2, the scale and offset that file's
        metadata give (:func:`~cloudclear.scenes.reflectance_scale`).

        Args:
            sensor: "S2" or "S1".
            sources: band name -> (path, 1-based band).
            infos: path -> the file's :class:`~cloudclear.scenes.FileInfo`, for every path in ``sources``.
            units: the scene's units.
            mask: the scene's mask, or None.
            detected: the detector's mask of a scene that also has ``mask``, or None.
        """
        reads = []
        for path, bidx in sources.values():
            info = infos[path]
            scale, offset = reflectance_scale(info, bidx) if sensor == "S2" else (1.0, 0.0)
            reads.append(BandRead(path, bidx, scale, offset, info.nodata))
        return cls(sensor, tuple(sources), tuple(reads), units, mask, detected)

    def physical(self, values: np.ndarray) -> np.ndarray:
        """``values`` (bands, ...) in physical units, float32 (see :func:`to_physical`)."""
        scales = [b.scale for b in self.bands]
        offsets = [b.offset for b in self.bands]
        if len(set(scales)) <= 1 and len(set(offsets)) <= 1:
            return to_physical(values, scales[0] if scales else 1.0, offsets[0] if offsets else 0.0, self.units)
        out = np.empty(values.shape, np.float32)
        for i in range(len(self.bands)):
            out[i] = to_physical(values[i], scales[i], offsets[i], self.units)
        return out

    def warp_nodata(self, band: BandRead) -> float | None:
        """The nodata value a warped view of ``band`` declares: the band's, 0 for S2 without one."""
        if band.nodata is not None:
            return band.nodata
        return 0.0 if self.sensor == "S2" else None


def per_band(scene: _SceneLike, i: int, name: str) -> tuple[float, float]:
    """(scale, offset) of band ``name`` (position ``i``) of a Scene (``band_scales``) or an
    acquisition (``scale`` / ``offset``: one value, or one per band)."""
    band_scales = getattr(scene, "band_scales", None)
    if band_scales:
        return band_scales.get(name, (scene.scale, scene.offset))
    return pick(scene.scale, i), pick(scene.offset, i)


def pick(value: float | Sequence[float], i: int) -> float:
    """One band's value of a scale or offset given once (every band) or per band."""
    return float(value) if isinstance(value, int | float) else float(value[i])


#: Mask conventions read from several bands of their file (from the MaskBand's band on), packed
#: into one value as bits (band k -> bit k): ESA's MSK_CLASSI (opaque clouds, cirrus, snow).
MASK_BANDS: dict[str, int] = {"CLASSI": 3}


def mask_indexes(mb: masks.MaskBand) -> tuple[int, ...]:
    """The 1-based bands of a mask's file that make the mask (one, but for :data:`MASK_BANDS`)."""
    return tuple(range(mb.band, mb.band + MASK_BANDS.get(mb.convention, 1)))


def pack_mask(raw: np.ndarray, convention: str) -> np.ndarray:
    """A mask's values as its decoder reads them, from the (bands, rows, cols) read at
    :func:`mask_indexes`: band 0, or the bands packed as bits (non-zero in band k sets bit k)."""
    if convention not in MASK_BANDS or raw.shape[0] == 1:
        return raw[0]
    out = np.zeros(raw.shape[1:], np.uint8)
    for k in range(raw.shape[0]):
        out |= (raw[k] != 0).astype(np.uint8) << k
    return out


#: Linear power below this is taken as this before converting to dB (no -inf for zero returns).
#: :class:`cloudclear.nets.feed.Feed` applies the same conversion in torch on the network's device.
LINEAR_FLOOR = 1e-6


def to_physical(
    values: np.ndarray, scale: float | Sequence[float], offset: float | Sequence[float], units: str = "reflectance"
) -> np.ndarray:
    """Raw values in physical units, float32: ``DN * scale + offset``, then dB for linear S1.

    Args:
        values: raw values, any shape.
        scale: see :class:`BandRead`.
        offset: see :class:`BandRead`.
        units: "linear" converts to dB (``10 log10``, floored at 1e-6); anything else is kept.
    """
    v: np.ndarray = values.astype(np.float32)
    if not isinstance(scale, int | float) or not isinstance(offset, int | float):
        # Per band along axis 0 (offsets honoured band by band).
        n = values.shape[0]
        shape = (n,) + (1,) * (values.ndim - 1)
        sc = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (n,)).reshape(shape)
        off = np.broadcast_to(np.asarray(offset, np.float32).reshape(-1), (n,)).reshape(shape)
        v *= sc
        v += off
    elif scale != 1.0 or offset != 0.0:
        v *= np.float32(scale)
        v += np.float32(offset)
    if units.lower() == "linear":
        with np.errstate(divide="ignore", invalid="ignore"):
            v = 10.0 * np.log10(np.maximum(v, LINEAR_FLOOR))
    return v


def classes_of(decoded: np.ndarray | None, valid: np.ndarray) -> np.ndarray:
    """Mask classes where the bands are valid, NODATA elsewhere; without a mask, CLEAR where valid.

    Args:
        decoded: decoded mask classes (rows, cols), or None when the scene has no mask. Changed in place.
        valid: (rows, cols) where every band read holds a value.
    """
    if decoded is None:
        return np.where(valid, masks.MaskClass.CLEAR, masks.MaskClass.NODATA).astype(np.uint8)
    decoded[~valid] = masks.MaskClass.NODATA
    return decoded


@dataclass
class Pixels:
    """Rows or a window of a scene on a grid.

    Attributes:
        values: (bands, rows, cols) raw values (the files' common dtype).
        band_valid: (bands, rows, cols) where each band holds a value.
        valid: (rows, cols) where every band does.
        classes: (rows, cols) uint8 :class:`~cloudclear.masks.MaskClass`: the mask's classes where
            valid, NODATA elsewhere; without a mask CLEAR where valid.
        has_mask: whether ``classes`` come from a mask.
        spec: what was read.
        removed: (rows, cols) valid pixels the scene's mask calls clear that the reader's clear
            policy calls obscured; None when the policy keeps the mask as decoded.
        removed_by: how many of ``removed`` each rule removed, first rule first: "detector"
            (the detector's mask combined), "unclassified", "snow", "buffer"; None with ``removed``.
    """

    values: np.ndarray
    band_valid: np.ndarray
    valid: np.ndarray
    classes: np.ndarray
    has_mask: bool
    spec: ReadSpec
    removed: np.ndarray | None = None
    removed_by: dict[str, int] | None = None

    @property
    def clear(self) -> np.ndarray:
        """(rows, cols) where the surface is seen: valid and of a clear class (snow included)."""
        return masks.is_clear(self.classes)

    @property
    def known(self) -> np.ndarray:
        """(rows, cols) where the mask tells the class of a valid pixel (all valid pixels without a mask)."""
        return self.classes != masks.MaskClass.NODATA

    @property
    def obscured(self) -> np.ndarray:
        """(rows, cols) valid pixels the mask calls cloud, thin cloud or shadow."""
        return masks.is_obscured(self.classes)

    @property
    def cloud_pct(self) -> float | None:
        """% of known pixels that are obscured; None without a mask or without a known pixel."""
        if not self.has_mask:
            return None
        known = int(self.known.sum())
        return 100.0 * float(self.obscured.sum()) / known if known else None

    def physical(self, cols: slice | None = None, *, nan_invalid: bool = False) -> np.ndarray:
        """The values in physical units (reflectance, dB), float32.

        Args:
            cols: only these columns.
            nan_invalid: NaN where a band holds no value.
        """
        values = self.values if cols is None else self.values[..., cols]
        out = self.spec.physical(values)
        if nan_invalid:
            out[~(self.band_valid if cols is None else self.band_valid[..., cols])] = np.nan
        return out


def _open(
    path: str, indexes: tuple[int, ...], grid: Grid, resampling: str, nodata: float | None, *, coverage: bool
) -> GridReader:
    return GridReader(path, list(indexes), grid, resampling, nodata, coverage=coverage)


def _check_covers(mask: GridReader, band: GridReader, grid: Grid) -> None:
    """Refuse a mask that lies nowhere on its scene (a file replaced after indexing); a mask that
    covers part of it is NODATA beyond its edge."""
    src_m, src_b = getattr(mask, "src", None), getattr(band, "src", None)
    if getattr(mask, "vrt", None) is None or src_m is None or src_b is None or src_m.crs is None:
        return
    from rasterio.warp import transform_bounds

    crs = grid.crs or src_b.crs
    ml, mb, mr, mt = transform_bounds(src_m.crs, crs, *src_m.bounds)
    bl, bb, br, bt = transform_bounds(src_b.crs, crs, *src_b.bounds) if src_b.crs else src_b.bounds
    tol = max(abs(src_m.res[0]), grid.res)
    if ml >= br - tol or mr <= bl + tol or mb >= bt - tol or mt <= bb + tol:
        raise GridError(f"{mask.path}: mask grid does not cover scene {band.path}")


def _room(rd: GridReader, grid: Grid, halo: int) -> tuple[int, int, int, int]:
    """Rows and columns (top, left, bottom, right), at most ``halo`` each, that the file ``rd``
    reads directly holds beyond ``grid``; a warped view gets ``halo`` on every side (where it does
    not reach, its pixels are NODATA); none for pixels an opener holds (no ``src``: the grid's)."""
    if rd.vrt is not None:
        return (halo, halo, halo, halo)
    if getattr(rd, "src", None) is None:
        return (0, 0, 0, 0)
    h, w = rd.src.height, rd.src.width
    return (
        min(halo, rd.row_off),
        min(halo, rd.col_off),
        min(halo, max(0, h - rd.row_off - grid.height)),
        min(halo, max(0, w - rd.col_off - grid.width)),
    )


class SceneReader:
    """A scene's bands and mask read on a grid, rows or windows at a time.

    Bands sharing a file (a stack, VV + VH) are read in one call, so each block is decoded once.

    Args:
        spec: what to read.
        grid: the grid to read on.
        opener: opens one file's bands (default: a new :class:`~cloudclear.gridio.GridReader`
            each, closed by :meth:`close`); readers it returns are the caller's to close.
        policy: what the mask's classes become before *clear* is decided (default: nothing
            changes). With a buffer, the mask is read with a halo of ``policy.buffer_px`` rows
            and columns around each read, so reading in strips or windows equals one whole read.
        halo: read the masks with that halo beyond the grid where their files hold it, opening
            them on the grown grid (default: when the reader opens its own files, not sampling's).

    Raises:
        SceneNotFoundError: a file is gone.
        InvalidRasterError: a file cannot be opened, lacks a band, or cannot be placed on the grid.
    """

    def __init__(
        self,
        spec: ReadSpec,
        grid: Grid,
        *,
        opener: Opener | None = None,
        policy: masks.ClearPolicy = masks.DEFAULT_POLICY,
        halo: bool | None = None,
    ):
        self.spec = spec
        self.grid = grid
        self.policy = policy
        self.owned = opener is None
        open_ = opener or _open
        by_file: dict[tuple[str, float | None], list[tuple[int, int]]] = {}
        for pos, b in enumerate(spec.bands):
            by_file.setdefault((b.path, spec.warp_nodata(b)), []).append((pos, b.band))
        self.files: list[tuple[GridReader, list[int]]] = []
        self.mask: GridReader | None = None
        self.detected: GridReader | None = None
        own, det = spec.mask, spec.detected
        if policy.source == "mask":
            det = None
        elif policy.source == "detector" and det is not None:
            own = None
        #: The masks read: (the scene's own or None, the detector's or None).
        self.masks_read: tuple[masks.MaskBand | None, masks.MaskBand | None] = (own, det)
        try:
            for (path, nodata), items in by_file.items():
                rd = open_(path, tuple(b for _, b in items), grid, BAND_RESAMPLING, nodata, coverage=False)
                self.files.append((rd, [p for p, _ in items]))
            #: Rows and columns (top, left, bottom, right) a mask ("mask", "detected") holds beyond the grid.
            self.pads: dict[str, tuple[int, int, int, int]] = {}
            halo_on = policy.halo > 0 and (opener is None if halo is None else halo)
            room = getattr(opener, "room", None) if halo_on else None
            # Where a warped mask does not reach, its pixels are NODATA, not the fill value
            # (0 is "clear" in several conventions).
            if own is not None:
                self.mask = self._open_mask("mask", own, open_, room)
                if self.files:
                    _check_covers(self.mask, self.files[0][0], grid)
            if det is not None:
                self.detected = self._open_mask("detected", det, open_, room)
            # A buffer needs the masks a halo beyond the grid where the files have it (a --bbox
            # crop of a tile): each mask is reopened on the grid grown by what its file holds.
            for name in ("mask", "detected"):
                rd = getattr(self, name)
                if rd is None or not halo_on or name in self.pads:
                    continue
                band = own if name == "mask" else det
                assert band is not None
                pad = _room(rd, grid, policy.halo)
                if any(pad):
                    if self.owned:
                        rd.close()
                    rd = open_(band.path, mask_indexes(band), grid.pad(*pad), MASK_RESAMPLING, None, coverage=True)
                    setattr(self, name, rd)
                    self.pads[name] = pad
        except BaseException:
            self.close()
            raise

    def _open_mask(self, name: str, band: masks.MaskBand, open_: Opener, room: Any) -> GridReader:
        """Open mask ``name`` on the grid, grown at once by the room the opener tells (``room``)."""
        pad = room(band.path, self.grid, self.policy.halo) if room is not None else None
        grid = self.grid
        if pad is not None and any(pad):
            grid = self.grid.pad(*pad)
            self.pads[name] = pad
        return open_(band.path, mask_indexes(band), grid, MASK_RESAMPLING, None, coverage=True)

    @property
    def block_rows(self) -> int:
        """Block height of the first band file read directly (0 when read through a warped view)."""
        return self.files[0][0].block_rows if self.files else 0

    @property
    def row_off(self) -> int:
        """Row of the grid's first row in the first band file."""
        return self.files[0][0].row_off if self.files else 0

    def read(self, r0: int, r1: int) -> Pixels:
        """Rows ``r0..r1`` of the grid, every column.

        Raises:
            InvalidRasterError: a block cannot be decoded.
        """
        return self._pixels(r0, r1, 0, self.grid.width)

    def read_window(self, r0: int, r1: int, c0: int, c1: int) -> Pixels:
        """Rows ``r0..r1`` and columns ``c0..c1`` of the grid.

        Raises:
            InvalidRasterError: a block cannot be decoded.
        """
        return self._pixels(r0, r1, c0, c1)

    def read_mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """The mask classes of a window, the reader's policy applied, bands not read (NODATA only
        where the mask says so); None when the scene has no mask."""
        got = self._mask(r0, r1, c0, c1)
        return None if got is None else got[0]

    def _mask(
        self, r0: int, r1: int, c0: int, c1: int
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, np.ndarray]]] | None:
        """(classes with the policy applied, the scene's mask as decoded or None when the policy
        keeps it as it is, [(rule, classes after that rule)...]); None when no mask is read."""
        own_band, det_band = self.masks_read
        if own_band is None and det_band is None:
            return None
        if self.policy.changes_nothing or (det_band is None and not self.policy.changes_classes):
            name = "mask" if own_band is not None else "detected"
            return self._decoded(name, own_band or det_band, r0, r1, c0, c1)[0], None, []
        h = self.policy.halo
        # The halo reaches beyond the grid as far as every mask read has rows and columns there.
        read = [n for n, band in zip(("mask", "detected"), self.masks_read, strict=True) if band is not None]
        pads = [self.pads.get(n, (0, 0, 0, 0)) for n in read]
        top, left, bottom, right = (min(p[k] for p in pads) for k in range(4))
        a0, a1 = max(-top, r0 - h), min(self.grid.height + bottom, r1 + h)
        b0, b1 = max(-left, c0 - h), min(self.grid.width + right, c1 + h)
        own = raw = det = None
        if own_band is not None:
            own, raw = self._decoded("mask", own_band, a0, a1, b0, b1)
        if det_band is not None:
            det = self._decoded("detected", det_band, a0, a1, b0, b1)[0]
        steps: list[tuple[str, np.ndarray]] = []
        combined = masks.combine(own, det)
        assert combined is not None
        if own is not None and det is not None:
            steps.append(("detector", combined))
        convention = own_band.convention if own_band is not None else "SCL"
        applied = masks.apply_policy(combined, self.policy, raw, convention, steps=steps)
        core = (slice(r0 - a0, r1 - a0), slice(c0 - b0, c1 - b0))
        before = own if own is not None else det
        assert before is not None
        return applied[core], before[core], [(rule, arr[core]) for rule, arr in steps]

    def _decoded(
        self, name: str, mb: masks.MaskBand | None, r0: int, r1: int, c0: int, c1: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(decoded classes, raw values) of a window of mask ``name`` ("mask" or "detected"), in
        grid rows and columns (negative or beyond the grid within the mask's pad)."""
        reader: GridReader | None = getattr(self, name)
        assert reader is not None and mb is not None
        if name in self.pads:
            top, left, _, _ = self.pads[name]
            r0, r1, c0, c1 = r0 + top, r1 + top, c0 + left, c1 + left
            raw = reader.read_window(r0, r1, c0, c1)
        else:
            full = (c0, c1) == (0, self.grid.width)
            raw = reader.read(r0, r1) if full else reader.read_window(r0, r1, c0, c1)
        packed = pack_mask(raw, mb.convention)
        try:
            out = masks.decode(packed, mb.convention, reader.nodatavals[mb.band - 1]).astype(np.uint8, copy=False)
        except MaskError as exc:
            raise MaskError(f"{mb.path}: {exc}") from None
        covered = reader.covered(r0, r1, c0, c1)
        if covered is not None:
            out[~covered] = masks.MaskClass.NODATA
        return out, packed

    def _pixels(self, r0: int, r1: int, c0: int, c1: int) -> Pixels:
        spec = self.spec
        n = len(spec.bands)
        rows, cols = r1 - r0, c1 - c0
        full = (c0, c1) == (0, self.grid.width)
        parts = [(rd.read(r0, r1) if full else rd.read_window(r0, r1, c0, c1), pos) for rd, pos in self.files]
        dtype = np.result_type(*[p.dtype for p, _ in parts]) if parts else np.dtype(np.float32)
        values = np.empty((n, rows, cols), dtype)
        band_valid = np.empty((n, rows, cols), bool)
        for data, pos in parts:
            for d, p in zip(data, pos, strict=True):
                values[p] = d
                # Judged on the file's own values, before any cast to the common dtype.
                band_valid[p] = valid_pixels(d, spec.bands[p].nodata, spec.sensor)
        valid = np.asarray(band_valid.all(axis=0)) if n else np.ones((rows, cols), bool)
        got = self._mask(r0, r1, c0, c1)
        if got is None:
            return Pixels(values, band_valid, valid, classes_of(None, valid), False, spec)
        classes, before, steps = got
        removed = removed_by = None
        if before is not None:
            kept = valid & masks.is_clear(before)
            removed = kept & ~masks.is_clear(classes)
            removed_by = {}
            for rule, after in steps:
                gone = kept & ~masks.is_clear(after)
                removed_by[rule] = int(gone.sum())
                kept &= ~gone
        return Pixels(values, band_valid, valid, classes_of(classes, valid), True, spec, removed, removed_by)

    def close(self) -> None:
        """Close the files this reader opened (not those an ``opener`` handed it)."""
        if not self.owned:
            return
        for rd, _ in self.files:
            rd.close()
        for m in (self.mask, self.detected):
            if m is not None:
                m.close()
