"""Sentinel-1 VV and VH delivered as separate GeoTIFFs: the polarisation in the name decides the
band, the two files of one acquisition make one scene, and the units are stated or measured."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_raster

from cloudclear.errors import InvalidRasterError, NotASceneError
from cloudclear.scenes import assemble, classify, read_file_info

#: An ASF HyP3 RTC product's base name (gamma-0, power, unmasked, not filtered, entire area, dead
#: reckoning); its files add _VV / _VH and the maps.
HYP3 = "S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A"


def _linear(rng: np.random.Generator, scale: float = 0.05) -> np.ndarray:
    return (rng.gamma(4.0, scale / 4.0, size=(64, 64))).astype(np.float32)


def _hyp3(tmp_path, rng, base: str = HYP3) -> list:
    folder = tmp_path / base
    paths = [
        write_raster(folder / f"{base}_VV.tif", _linear(rng, 0.1), nodata=0.0),
        write_raster(folder / f"{base}_VH.tif", _linear(rng, 0.02), nodata=0.0),
        # The maps beside them share the base name but hold no backscatter.
        write_raster(folder / f"{base}_inc_map.tif", np.full((64, 64), 38.0, np.float32)),
        write_raster(folder / f"{base}_ls_map.tif", np.zeros((64, 64), np.uint8)),
    ]
    return [read_file_info(p) for p in paths]


def test_polarisation_in_the_name_decides_the_band(tmp_path, rng):
    vh = read_file_info(write_raster(tmp_path / "S1_20200101_VH.tif", _linear(rng)))
    vv = read_file_info(write_raster(tmp_path / "S1_20200101_VV.tif", _linear(rng)))
    assert classify(vh).bands == {"VH": 1} and classify(vh).band_source == "name"
    assert classify(vv).bands == {"VV": 1}


def test_hyp3_rtc_pair_is_one_scene_in_linear_power(tmp_path, rng):
    infos = _hyp3(tmp_path, rng)
    vv, vh, inc, ls = infos
    assert classify(vv).bands == {"VV": 1} and classify(vh).bands == {"VH": 1}
    assert classify(vv).units == "linear"  # the name's "p": power
    for info in (inc, ls):
        with pytest.raises(NotASceneError):
            classify(info)
    scenes, skipped = assemble(infos)
    assert len(scenes) == 1
    scene = scenes[0]
    assert scene.sensor == "S1" and scene.units == "linear"
    assert scene.band_sources == {"VV": (vv.path, 1), "VH": (vh.path, 1)}
    assert scene.datetime.isoformat() == "2018-01-28T16:12:01+00:00"
    assert {s.path for s in skipped} == {inc.path, ls.path}


def test_hyp3_decibel_from_the_name(tmp_path, rng):
    base = HYP3.replace("_gpuned_", "_gduned_")
    path = write_raster(tmp_path / f"{base}_VH.tif", np.full((64, 64), 0.2, np.float32))
    assert classify(read_file_info(path)).units == "dB"  # stated, although the pixels look linear


def test_hyp3_amplitude_is_refused_with_one_line(tmp_path, rng):
    base = HYP3.replace("_gpuned_", "_gauned_")
    info = read_file_info(write_raster(tmp_path / f"{base}_VV.tif", _linear(rng)))
    with pytest.raises(InvalidRasterError, match=r"_VV\.tif: Sentinel-1 amplitude, not power or dB") as exc:
        classify(info)
    assert "\n" not in str(exc.value) and not isinstance(exc.value, NotASceneError)  # refused, not skipped
    _, skipped = assemble([info])
    assert [s.refused for s in skipped] == [True]


def test_units_from_tag_description_and_pixels(tmp_path, rng):
    tagged = read_file_info(write_raster(tmp_path / "S1B_20200101_VV.tif", _linear(rng), tags={"UNITS": "dB"}))
    assert classify(tagged).units == "dB"
    described = read_file_info(
        write_raster(tmp_path / "S1_20200102_VH.tif", _linear(rng), descriptions=["VH linear power"])
    )
    assert classify(described).units == "linear" and classify(described).bands == {"VH": 1}
    db = read_file_info(write_raster(tmp_path / "S1_20200103_VV.tif", np.full((64, 64), -14.0, np.float32)))
    assert classify(db).units == "dB"  # measured: backscatter in dB is negative


def test_two_dates_make_two_scenes_and_one_file_stays_alone(tmp_path, rng):
    infos = [
        read_file_info(write_raster(tmp_path / f"S1_{d}_{p}.tif", _linear(rng)))
        for d in ("20200101", "20200113")
        for p in ("VV", "VH")
    ]
    infos.append(read_file_info(write_raster(tmp_path / "S1_20200125_VH.tif", _linear(rng))))
    scenes, skipped = assemble(infos)
    assert not skipped
    assert [tuple(s.band_sources) for s in scenes] == [("VV", "VH"), ("VV", "VH"), ("VH",)]


def test_name_naming_fewer_polarisations_than_bands_is_refused(tmp_path, rng):
    info = read_file_info(write_raster(tmp_path / "S1_20200101_VV.tif", np.stack([_linear(rng)] * 2)))
    with pytest.raises(InvalidRasterError, match="names polarisation.s. VV but the file has 2 band"):
        classify(info)


def test_satellite_token_without_polarisation_is_no_scene(tmp_path, rng):
    # Before: only the "S1" token counted; a satellite token with no polarisation stays unknown.
    info = read_file_info(write_raster(tmp_path / "S1A_20200101_dem.tif", np.zeros((64, 64), np.float32)))
    with pytest.raises(NotASceneError):
        classify(info)


def test_s1_token_and_band_count_still_name_vv_vh(tmp_path, rng):
    info = read_file_info(write_raster(tmp_path / "S1_20200101.tif", np.stack([_linear(rng)] * 2)))
    role = classify(info)
    assert role.bands == {"VV": 1, "VH": 2} and role.band_source == "count"


def test_index_records_a_hyp3_pair_as_one_rtc_scene_in_linear_power(tmp_path, rng):
    from cloudclear.catalog import Catalog, build_index

    _hyp3(tmp_path, rng)
    res = build_index(tmp_path, tmp_path / "c.gpkg", detect=None)
    assert not res.refused
    (scene,) = list(Catalog.open(res.catalog_path))
    assert (scene.sensor, scene.level, scene.units, scene.bands) == ("S1", "RTC", "linear", ("VV", "VH"))
