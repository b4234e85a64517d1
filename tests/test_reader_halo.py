"""A mask read with a halo (a clear policy's buffer) through an opener: opened once, on the grid
grown by the room the opener tells, and read as the reader that opens its own files reads it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import write_raster

from cloudclear import masks
from cloudclear.acquisitions import grid_of_file
from cloudclear.gridio import Grid, GridReader
from cloudclear.scenes.reader import BandRead, ReadSpec, SceneReader

BANDS = ["B02", "B03", "B04", "B08"]
SIZE = 64


def _scene(folder):
    """An S2 stack at 10 m and its SCL at 20 m (warped onto the scene's grid), clouds and shadow
    near every edge so that a buffer reaches across strips and the grid's border."""
    rng = np.random.default_rng(5)
    data = rng.integers(300, 3000, (4, SIZE, SIZE)).astype(np.uint16)
    stack = write_raster(folder / "S2_T31UFQ_20210501T103000.tif", data, descriptions=BANDS, nodata=0)
    scl = np.full((SIZE // 2, SIZE // 2), 4, np.uint8)
    scl[rng.random(scl.shape) < 0.08] = 9
    scl[10:12, :] = 3
    scl[:, 0] = 8
    scl[-1, :3] = 0
    mask = write_raster(folder / "S2_T31UFQ_20210501T103000_SCL.tif", scl, res=20.0, descriptions=["SCL"])
    spec = ReadSpec(
        "S2",
        tuple(BANDS),
        tuple(BandRead(str(stack), i + 1, 1e-4, 0.0, 0.0) for i in range(4)),
        mask=masks.MaskBand(str(mask), 1, "SCL"),
    )
    return spec, grid_of_file(stack), str(mask)


class _Opener:
    """Opens a new reader per call, counting opens per path; ``room`` is the protocol's optional
    hint (what a file holds beyond the grid), given for the 20 m mask only (always warped)."""

    def __init__(self, mask: str, tell: bool):
        self.mask, self.tell = mask, tell
        self.opened: list[GridReader] = []
        self.count: Counter[str] = Counter()
        if not tell:
            self.room = None  # type: ignore[assignment]

    def room(self, path: str, grid: Grid, halo: int):
        return (halo,) * 4 if path == self.mask else None

    def __call__(self, path, indexes, grid, resampling, nodata, *, coverage):
        self.count[path] += 1
        rd = GridReader(path, list(indexes), grid, resampling, nodata, coverage=coverage)
        self.opened.append(rd)
        return rd

    def close(self):
        for rd in self.opened:
            rd.close()


def _reads(reader: SceneReader, grid: Grid):
    """The whole grid, its strips of 16 rows and a window inside it."""
    whole = reader.read(0, grid.height)
    strips = [reader.read(r, min(r + 16, grid.height)) for r in range(0, grid.height, 16)]
    h, w = grid.height, grid.width
    win = reader.read_window(h // 4, 3 * h // 4, w // 5, 4 * w // 5)
    return whole, strips, win


def _same(a, b):
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.classes, b.classes)
    assert (a.removed is None) == (b.removed is None)
    if a.removed is not None:
        np.testing.assert_array_equal(a.removed, b.removed)
        assert a.removed_by == b.removed_by


@pytest.mark.parametrize("policy", [masks.DEFAULT_POLICY, masks.STRICT], ids=["default", "strict"])
@pytest.mark.parametrize("tell", [True, False], ids=["room-told", "room-unknown"])
@pytest.mark.parametrize("crop", [False, True], ids=["whole", "crop"])
def test_opener_with_halo_reads_as_the_reader_opening_its_files(tmp_path, policy, tell, crop):
    spec, grid, mask = _scene(tmp_path)
    if crop:  # a --bbox crop: the files hold rows and columns beyond the grid
        grid = grid.crop((600000.0 + 100, 5700000.0 - 500, 600000.0 + 450, 5700000.0 - 90))
    ref = SceneReader(spec, grid, policy=policy)
    opener = _Opener(mask, tell)
    got = SceneReader(spec, grid, policy=policy, opener=opener, halo=True)
    try:
        assert ref.pads == got.pads and ref.pads["mask"] == (policy.halo,) * 4
        (w1, s1, v1), (w2, s2, v2) = _reads(ref, grid), _reads(got, grid)
        assert w1.removed is not None and w1.removed.any()  # the buffer does something here
        _same(w1, w2)
        _same(v1, v2)
        for a, b in zip(s1, s2, strict=True):
            _same(a, b)
        # Told the room, the mask is opened once, on the grown grid; else once more, as before.
        assert opener.count[mask] == (1 if tell else 2)
    finally:
        ref.close()
        got.close()
        opener.close()


def test_an_opener_keeps_its_readers_on_the_grid_by_default(tmp_path):
    """Sampling's cached readers: no halo unless asked (what sampling reads stays what it was)."""
    spec, grid, mask = _scene(tmp_path)
    opener = _Opener(mask, tell=True)
    reader = SceneReader(spec, grid, policy=masks.DEFAULT_POLICY, opener=opener)
    try:
        assert reader.pads == {} and opener.count[mask] == 1
        assert reader.mask is not None and (reader.mask.vrt.width, reader.mask.vrt.height) == (grid.width, grid.height)
    finally:
        reader.close()
        opener.close()
