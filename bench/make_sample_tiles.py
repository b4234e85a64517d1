"""Make ``sample_tiles/32TPS``: a crop of the real Bolzano L2A series in ``../shared/data``.

Usage::

    python bench/make_sample_tiles.py [--src ../shared/data/eurac_bolzano_s2l2a_32TPS]
                                      [--dst sample_tiles/32TPS] [--row 160] [--col 96] [--size 512]
                                      [--overwrite]

Every ``S2_L2A_T32TPS_YYYYMMDD.tif`` of the source and its ``_SCL.tif`` are cut to the window
(rows ``--row`` .. ``--row + --size``, columns ``--col`` .. ``--col + --size`` of the source grid)
under the same file names. The pixels are copied as they are (no resampling); the CRS, the band
descriptions, every dataset and band tag and the nodata value are kept, and the transform is the
source's moved by whole pixels. Written tiled (256 x 256), DEFLATE level 9 with predictor 2,
through :func:`cloudclear.outputs.atomic_output`. Prints, per date, the cloud + shadow % by SCL
(codes 3, 8, 9, 10) in the crop, and the total size. Run from the project root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from cloudclear.gdal import gdal_env
from cloudclear.outputs import atomic_output

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "eurac_bolzano_s2l2a_32TPS"
#: SCL codes counted as cloud or shadow: cloud shadow, cloud medium / high probability, thin cirrus.
OBSCURED_SCL = (3, 8, 9, 10)


def crop(src_path: Path, dst_path: Path, window: Window, overwrite: bool) -> None:
    """Copy ``window`` of one file to ``dst_path``, keeping its metadata."""
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        profile = src.profile.copy()
        profile.update(
            width=int(window.width),
            height=int(window.height),
            transform=src.window_transform(window),
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
            zlevel=12,
            predictor=2,
        )
        tags = src.tags()
        band_tags = [src.tags(i) for i in range(1, src.count + 1)]
        descriptions = src.descriptions
    with atomic_output(dst_path, overwrite=overwrite) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for i, (desc, bt) in enumerate(zip(descriptions, band_tags, strict=True), start=1):
            if desc:
                dst.set_band_description(i, desc)
            if bt:
                dst.update_tags(i, **bt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=SOURCE)
    ap.add_argument("--dst", type=Path, default=ROOT / "sample_tiles" / "32TPS")
    ap.add_argument("--row", type=int, default=160)
    ap.add_argument("--col", type=int, default=96)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()

    window = Window(args.col, args.row, args.size, args.size)
    files = sorted(args.src.glob("S2_L2A_T32TPS_*.tif"))
    if not files:
        raise SystemExit(f"{args.src}: no S2_L2A_T32TPS_*.tif")
    args.dst.mkdir(parents=True, exist_ok=True)
    with gdal_env("synth"):
        for f in files:
            crop(f, args.dst / f.name, window, args.overwrite)
    with rasterio.open(files[0]) as src:
        t = src.window_transform(window)
        r1, c1 = args.row + args.size, args.col + args.size
        print(f"window: rows {args.row}..{r1}, cols {args.col}..{c1} of {src.width} x {src.height}")
        x1, y0 = t.c + args.size * t.a, t.f + args.size * t.e
        print(f"UTM (EPSG:{src.crs.to_epsg()}): x {t.c:.0f}..{x1:.0f}, y {y0:.0f}..{t.f:.0f}")
    print("| date | cloud + shadow % | shadow % | cloud % | cirrus % |")
    print("|---|---|---|---|---|")
    for scl_path in sorted(args.dst.glob("*_SCL.tif")):
        with rasterio.open(scl_path) as s:
            scl = s.read(1)
        n = scl.size
        pct = [100 * np.isin(scl, codes).sum() / n for codes in (OBSCURED_SCL, (3,), (8, 9), (10,))]
        date = scl_path.stem.split("_")[3]
        print(f"| {date[:4]}-{date[4:6]}-{date[6:]} | {pct[0]:.1f} | {pct[1]:.1f} | {pct[2]:.1f} | {pct[3]:.1f} |")
    total = sum(p.stat().st_size for p in args.dst.glob("*.tif"))
    print(f"{len(list(args.dst.glob('*.tif')))} files, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
