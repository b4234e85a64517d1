"""A file's role is decided once per index: :func:`classify` keeps it by what it reads, and an S1
file's units that only its pixels tell are read in the open that reads its metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import count_opens, write_raster

from cloudclear.scenes import classify, read_file_info
from cloudclear.scenes.files import _classify


def _db_from_pixels(path: Path) -> str:
    """The reference: the median of the central block, read on its own (negative: dB)."""
    with rasterio.open(path) as src:
        data = src.read(1).astype("float64")
    return "dB" if float(np.median(data[np.isfinite(data)])) < 0 else "linear"


@pytest.mark.parametrize("level", [-12.0, 0.05], ids=["dB", "linear"])
def test_s1_units_from_pixels_are_read_in_the_metadata_open(tmp_path, monkeypatch, level):
    rng = np.random.default_rng(1)
    data = (level + rng.normal(0, abs(level) / 10, (2, 32, 32))).astype(np.float32)
    path = write_raster(tmp_path / "S1_T31UFQ_20210501T172944.tif", data, descriptions=["VV", "VH"])
    counts = count_opens(monkeypatch)
    roles = []
    info = read_file_info(path, then=lambda src, i: roles.append(classify(i)) or i)
    assert counts[str(path)] == 1  # the pixels were read in the metadata's open
    again = classify(info)  # assemble's call: kept
    assert counts[str(path)] == 1 and again is roles[0]
    assert again.units == _db_from_pixels(path) == ("dB" if level < 0 else "linear")
    assert again == _classify(info)  # the one decision, kept or not


def test_a_changed_file_is_classified_again(tmp_path):
    path = write_raster(tmp_path / "S1_T31UFQ_20210501T172944.tif", np.full((1, 16, 16), -10.0, np.float32))
    first = classify(read_file_info(path))
    assert first.units == "dB" and first.bands == {"VV": 1}
    write_raster(path, np.full((2, 16, 16), 0.1, np.float32))  # now VV + VH, linear power
    os.utime(path, ns=(1, 1))
    second = classify(read_file_info(path))
    assert second is not first and second.units == "linear" and second.bands == {"VV": 1, "VH": 2}


@pytest.mark.parametrize(
    "name", ["a.tif", "S2_T31UFQ_20210501.tar.tif", ".hidden", "noext", "x.", "/vsizip/{/abs/a.zip}/T31_B02.jp2"]
)
def test_stem_is_pathlibs(tmp_path, name):
    path = write_raster(tmp_path / "f.tif", np.ones((1, 4, 4), np.uint8))
    info = read_file_info(path)
    info = type(info)(**{**info.to_dict(), "path": name if name.startswith("/") else str(tmp_path / name)})
    assert info.stem == Path(info.path).stem
