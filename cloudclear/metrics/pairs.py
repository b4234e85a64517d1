"""Pairs to score: a prediction, its reference and their masks, paired up from lists of files, and
opened for reading on their common grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudclear import masks
from cloudclear.errors import ScoreError
from cloudclear.gridio import Grid
from cloudclear.metrics.conventions import PIXEL_SETS, ScoreOptions
from cloudclear.metrics.reading import StripReader, align, mask_band_of, match_bands, nodata_of, open_info
from cloudclear.metrics.strips import Scorer
from cloudclear.scenes import FileInfo, reflectance_scale


@dataclass(frozen=True)
class Pair:
    """One prediction, its reference, and optionally the input's cloud mask and the reference's mask."""

    pred: str
    ref: str
    mask: str | None = None
    ref_mask: str | None = None


#: The tag ``cloudclear infer`` writes on each file to say what it is
#: (:data:`cloudclear.inference.writer.ROLE_TAG`), and the role of its status sidecars.
ROLE_TAG = "CLOUDCLEAR_ROLE"
STATUS_ROLE = "status"


def is_status_sidecar(path: str | Path) -> bool:
    """Whether ``path`` is the status sidecar of an ``infer`` output, not an image to score: tagged
    ``CLOUDCLEAR_ROLE=status``; or, written before that tag, ``NAME_status.tif`` with the sidecar's
    ``STATUS_CLASSES`` tag, or beside its ``NAME.tif``. An untagged file that cannot be opened is
    judged by its name and left for the scorer to refuse."""
    import rasterio

    path = Path(path)
    try:
        with rasterio.open(path) as src:
            tags = src.tags()
    except Exception:  # noqa: BLE001 - not readable: the scorer names the file and the cause
        tags = {}
    if ROLE_TAG in tags:
        return tags[ROLE_TAG] == STATUS_ROLE
    if not path.stem.endswith("_status"):
        return False
    return "STATUS_CLASSES" in tags or path.with_name(path.stem.removesuffix("_status") + path.suffix).exists()


def drop_status_sidecars(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """``paths`` without the status sidecars among them (:func:`is_status_sidecar`), and those
    sidecars: a glob such as ``out/*.tif`` matches both an output and its sidecar."""
    kept: list[str] = []
    dropped: list[str] = []
    for path in paths:
        (dropped if is_status_sidecar(path) else kept).append(path)
    return kept, dropped


def _date_in_name(path: str) -> str | None:
    import re

    from cloudclear.scenes import DEFAULT_DATE_PATTERN

    m = re.search(DEFAULT_DATE_PATTERN, Path(path).name)
    return m.group("date").replace("-", "") if m else None


def pair_up(
    preds: Sequence[str],
    refs: Sequence[str],
    masks_: Sequence[str] = (),
    ref_masks: Sequence[str] = (),
) -> list[Pair]:
    """Pair predictions with references and masks.

    One reference serves every prediction (a comparison of methods); as many references as
    predictions pair by order (a sequence: one date each). Masks likewise: none, one for all, or
    one per prediction. Paired files whose names carry different dates are refused, so a sorted
    glob that skipped a date cannot pair the wrong dates silently.

    Raises:
        ScoreError: the counts do not pair, or paired names carry different dates.
    """
    if not preds:
        raise ScoreError("nothing to score: no prediction given")
    if not refs:
        raise ScoreError("no reference given")

    def spread(items: Sequence[str], what: str) -> list[str | None]:
        if not items:
            return [None] * len(preds)
        if len(items) == 1:
            return [items[0]] * len(preds)
        if len(items) != len(preds):
            raise ScoreError(f"{len(preds)} prediction(s) but {len(items)} {what}: give one, or one per prediction")
        return list(items)

    ref_list = spread(refs, "references")
    mask_list = spread(masks_, "masks")
    ref_mask_list = spread(ref_masks, "reference masks")
    pairs = []
    for pred, ref, mask, ref_mask in zip(preds, ref_list, mask_list, ref_mask_list, strict=True):
        assert ref is not None
        if len(refs) > 1:
            for other in (ref, mask):
                if other is None:
                    continue
                dp, do = _date_in_name(pred), _date_in_name(other)
                if dp and do and dp != do:
                    raise ScoreError(f"{pred}: dated {dp} but paired by order with {other} dated {do}")
        pairs.append(Pair(pred, ref, mask, ref_mask))
    return pairs


def _resolve_pixels(opts: ScoreOptions, mask: str | None) -> str:
    pixels = opts.pixels
    if pixels == "auto":
        return "cloudy" if mask else "all"
    if pixels != "all" and not mask:
        raise ScoreError(f"--pixels {pixels} needs the input date's cloud mask (--mask)")
    return pixels


@dataclass
class OpenPair:
    """A pair opened for reading: its readers on the common grid, and what to score."""

    pair: Pair
    ref_info: FileInfo
    grid: Grid
    labels: list[str]
    pixels: str
    scorer: Scorer
    readers: list[StripReader]

    def close(self) -> None:
        """Close every file."""
        for rd in self.readers:
            rd.close()


def open_pair(pair: Pair, opts: ScoreOptions, mask_convention: str | None) -> OpenPair:
    """Open a pair's files on their common grid, ready to score; the caller closes it.

    Raises:
        ScoreError: the rasters cannot be compared (bands, grids, no overlap, mask convention).
        InvalidRasterError: a file is not a readable raster.
    """
    pred_info = open_info(pair.pred, "prediction")
    ref_info = open_info(pair.ref, "reference")
    pi, ri, labels = match_bands(pred_info, ref_info, opts.bands)
    grid, warped = align(pred_info, ref_info, opts.reproject)
    pixels = _resolve_pixels(opts, pair.mask)
    readers: list[StripReader] = []
    try:
        resampling = "bilinear" if warped else "nearest"
        pred = StripReader(pred_info, grid, pi, resampling=resampling, nodata=nodata_of(pred_info, opts.nodata))
        readers.append(pred)
        ref = StripReader(ref_info, grid, ri, resampling="nearest", nodata=nodata_of(ref_info, opts.nodata))
        readers.append(ref)
        mask = mask_band = ref_mask = ref_mask_band = None
        if pair.mask and PIXEL_SETS[pixels][0] is not None:
            mask, mask_band = _mask_reader(pair.mask, grid, mask_convention)
            readers.append(mask)
        if pair.ref_mask:
            ref_mask, ref_mask_band = _mask_reader(pair.ref_mask, grid, mask_convention)
            readers.append(ref_mask)
        scorer = Scorer(
            pred,
            ref,
            mask,
            mask_band,
            ref_mask,
            ref_mask_band,
            [reflectance_scale(pred_info, i, opts.scale) for i in pi],
            [reflectance_scale(ref_info, i, opts.scale) for i in ri],
            pixels,
            opts,
        )
    except BaseException:
        for rd in readers:
            rd.close()
        raise
    return OpenPair(pair, ref_info, grid, labels, pixels, scorer, readers)


def _mask_reader(path: str, grid: Grid, convention: str | None) -> tuple[StripReader, masks.MaskBand]:
    info = open_info(path, "mask")
    band = mask_band_of(info, convention)
    # Masks are often coarser (SCL at 20 m): nearest-neighbour onto the grid, never interpolated.
    return StripReader(info, grid, [band.band], resampling="nearest", nodata=info.nodata), band
