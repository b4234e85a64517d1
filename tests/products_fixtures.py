"""Writers of the product layouts users download, for tests: each function WRITES a real product
(file and folder names, metadata fields as the specifications name them, rasters through GDAL's own
drivers) into a folder the test gives (``tmp_path``) and returns what it wrote.

Formats, one heading each: SAFE (ESA Sentinel-2 L1C / L2A folders and .zip), THEIA (MUSCATE L2A
folders and .zip), STAC (items and ItemCollections with their COGs).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from conftest import write_raster

# =================================================================================================
# SAFE: ESA Sentinel-2 products (Level-1C, Level-2A), compact naming (PSD 14), as folders or .zip
# =================================================================================================

#: bandId (Spectral_Information) -> physicalBand as the ESA product XML writes it.
SAFE_PHYSICAL_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: cloudclear's band name of each bandId.
SAFE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: Native resolution (m) of each band.
SAFE_NATIVE = {
    **dict.fromkeys(("B02", "B03", "B04", "B08"), 10),
    **dict.fromkeys(("B05", "B06", "B07", "B8A", "B11", "B12"), 20),
    **dict.fromkeys(("B01", "B09", "B10"), 60),
}
#: What an L2A granule's IMG_DATA/R<res>m folders hold (baseline 04.00), in the XML's order.
SAFE_L2A_FILES = {
    10: ("AOT", "B02", "B03", "B04", "B08", "TCI", "WVP"),
    20: ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL", "TCI", "WVP"),
    60: ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL", "TCI", "WVP"),
}
SAFE_L1C_FILES = (*SAFE_BANDS, "TCI")


@dataclass
class SafeProduct:
    """A SAFE product written by :func:`write_safe`.

    Attributes:
        path: the ``.SAFE`` folder, or the ``.zip`` when zipped.
        name: the ``.SAFE`` folder name.
        level: "L1C" or "L2A".
        baseline: processing baseline ("04.00").
        granule: the granule folder name (under ``GRANULE/``).
        tile: MGRS tile ("32TPS").
        datatake_start: DATATAKE_SENSING_START / PRODUCT_START_TIME as written.
        sensing_time: the granule's SENSING_TIME as written.
        quantification: the quantification value written.
        offsets: band -> the DN offset written (empty before baseline 04.00).
        sun_zenith: Mean_Sun_Angle ZENITH_ANGLE written.
        sun_azimuth: Mean_Sun_Angle AZIMUTH_ANGLE written.
        spacecraft: SPACECRAFT_NAME written.
        pixels: path inside the SAFE (``GRANULE/.../B02_10m.jp2``) -> the array written there.
    """

    path: Path
    name: str
    level: str
    baseline: str
    granule: str
    tile: str
    datatake_start: str
    sensing_time: str
    quantification: int
    offsets: dict[str, int]
    sun_zenith: float
    sun_azimuth: float
    spacecraft: str
    pixels: dict[str, np.ndarray] = field(default_factory=dict)

    def band_file(self, band: str, res: int | None = None) -> str:
        """The path inside the SAFE of a band (native resolution unless ``res``) or mask."""
        g = f"GRANULE/{self.granule}"
        if band in ("MSK_CLDPRB", "MSK_SNWPRB"):
            return f"{g}/QI_DATA/{band}_20m.jp2"
        if band == "MSK_CLASSI":
            return f"{g}/QI_DATA/MSK_CLASSI_B00.jp2"
        stem = f"T{self.tile}_{self.name.split('_')[2]}_{band}"
        if self.level == "L1C":
            return f"{g}/IMG_DATA/{stem}.jp2"
        res = res or (20 if band == "SCL" else SAFE_NATIVE[band])
        return f"{g}/IMG_DATA/R{res}m/{stem}_{res}m.jp2"


def write_jp2(path: Path, data: np.ndarray, *, crs: str, origin: tuple[float, float], res: float) -> Path:
    """Write ``data`` (bands, rows, cols) as a lossless JPEG 2000 through GDAL's JP2OpenJPEG driver."""
    return write_raster(
        path, data, crs=crs, origin=origin, res=res, driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES"
    )


def write_safe(
    parent: Path,
    *,
    level: str = "L2A",
    baseline: str = "04.00",
    size: int = 120,
    tile: str = "32TPS",
    crs: str = "EPSG:32632",
    origin: tuple[float, float] = (600000.0, 5200020.0),
    datatake: str = "20220617T101611",
    sensing_time: str = "2022-06-17T10:16:08.862Z",
    generation: str = "20220617T162102",
    orbit: str = "A036437",
    spacecraft: str = "Sentinel-2A",
    offsets: dict[str, int] | None = None,
    sun: tuple[float, float] = (25.912, 143.507),
    band_files: dict[str, Path] | None = None,
    zipped: bool = False,
    seed: int = 0,
) -> SafeProduct:
    """Write a Sentinel-2 SAFE product into ``parent`` and return what was written.

    Args:
        parent: the folder to write into.
        level: "L1C" or "L2A".
        baseline: processing baseline; from "04.00" on, offset lists are written (-1000 unless
            ``offsets`` says otherwise for a band), before it none.
        size: 10 m pixels per side (20 m bands get half, 60 m a sixth; a multiple of 6).
        band_files: L1C only: band -> an existing JP2 to copy instead of writing pixels (the
            resolution and grid are the file's; the XML says what is given).
        zipped: also zip the folder (``<name>.zip``, ZIP_STORED, holding ``<name>.SAFE/...``) and
            remove the folder; ``path`` is then the zip.
        The other arguments are the metadata written (names follow from them).
    """
    if level not in ("L1C", "L2A"):
        raise ValueError(level)
    rng = np.random.default_rng(seed)
    short_bl = "N" + baseline.replace(".", "")
    name = f"S2{spacecraft[-1]}_MSI{level}_{datatake}_{short_bl}_R065_T{tile}_{generation}.SAFE"
    granule = f"{level}_T{tile}_{orbit}_{sensing_time[:19].replace('-', '').replace(':', '')}"
    new = baseline >= "04.00"
    quant = 10000
    offs = {b: (offsets or {}).get(b, -1000) for b in SAFE_BANDS} if new else {}
    sp = SafeProduct(
        path=parent / name,
        name=name,
        level=level,
        baseline=baseline,
        granule=granule,
        tile=tile,
        datatake_start=f"{datatake[:4]}-{datatake[4:6]}-{datatake[6:8]}T{datatake[9:11]}:{datatake[11:13]}:"
        f"{datatake[13:15]}.024Z",
        sensing_time=sensing_time,
        quantification=quant,
        offsets=offs,
        sun_zenith=sun[0],
        sun_azimuth=sun[1],
        spacecraft=spacecraft,
    )
    root = sp.path
    gdir = root / "GRANULE" / granule

    def put(rel: str, arr: np.ndarray, res: int) -> None:
        write_jp2(root / rel, arr, crs=crs, origin=origin, res=res)
        sp.pixels[rel] = arr

    image_files: list[str] = []
    if level == "L2A":
        base = {b: rng.integers(1, 9000, (size, size), dtype=np.uint16) + 1000 for b in SAFE_BANDS}
        for res, names in SAFE_L2A_FILES.items():
            f = res // 10
            n = size // f
            for what in names:
                rel = sp.band_file(what, res) if what in SAFE_NATIVE or what == "SCL" else None
                rel = rel or f"GRANULE/{granule}/IMG_DATA/R{res}m/T{tile}_{datatake}_{what}_{res}m.jp2"
                image_files.append(rel[: -len(".jp2")])
                if what == "TCI":
                    arr = rng.integers(0, 255, (3, n, n), dtype=np.uint8)
                elif what == "SCL":
                    arr = rng.integers(0, 12, (n, n), dtype=np.uint8)
                elif what in ("AOT", "WVP"):
                    arr = rng.integers(100, 300, (n, n), dtype=np.uint16)
                else:  # the band aggregated to this resolution: not the native values
                    arr = base[what].reshape(n, f, n, f).mean(axis=(1, 3)).astype(np.uint16)
                put(rel, arr, res)
        put(sp.band_file("MSK_CLDPRB"), rng.integers(0, 101, (size // 2, size // 2), dtype=np.uint8), 20)
        put(sp.band_file("MSK_SNWPRB"), np.zeros((size // 2, size // 2), np.uint8), 20)
    else:
        for what in SAFE_L1C_FILES:
            rel = sp.band_file(what) if what != "TCI" else f"GRANULE/{granule}/IMG_DATA/T{tile}_{datatake}_TCI.jp2"
            image_files.append(rel[: -len(".jp2")])
            if band_files and what in band_files:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(band_files[what], root / rel)
                continue
            res = SAFE_NATIVE.get(what, 10)
            n = size * 10 // res
            shape = (3, n, n) if what == "TCI" else (n, n)
            dtype = np.uint8 if what == "TCI" else np.uint16
            put(rel, rng.integers(1, 255 if what == "TCI" else 12000, shape, dtype=dtype), res)
        if not new:  # before 04.00 the masks were GML vectors
            (gdir / "QI_DATA").mkdir(parents=True, exist_ok=True)
            (gdir / "QI_DATA" / "MSK_CLOUDS_B00.gml").write_text("<eop:Mask/>\n")
    if new:
        put(sp.band_file("MSK_CLASSI"), rng.integers(0, 2, (3, size // 6, size // 6), dtype=np.uint8), 60)

    (root / f"MTD_MSI{level}.xml").write_text(_safe_product_xml(sp, image_files))
    (gdir / "MTD_TL.xml").write_text(_safe_tile_xml(sp, crs, origin, size))
    for sub in ("AUX_DATA", "DATASTRIP", "HTML", "rep_info"):
        (root / sub).mkdir(exist_ok=True)
    (root / "manifest.safe").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU/>\n')
    if zipped:
        sp.path = zip_safe(root, parent / (name[: -len(".SAFE")] + ".zip"))
        shutil.rmtree(root)
    return sp


def write_safe_old_format(
    parent: Path,
    tiles: tuple[str, ...] = ("32TPS", "32TQS"),
    *,
    size: int = 60,
    sun: tuple[float, ...] = (25.5, 26.5),
) -> tuple[Path, list[SafeProduct]]:
    """Write an L1C product in the naming used before December 2016: one product, one granule per
    tile (``S2A_OPER_PRD_MSIL1C_PDMC_...SAFE``, product XML ``S2A_OPER_MTD_SAFL1C_...xml`` listing
    ``Granules`` by ``IMAGE_ID``, granule XML ``S2A_OPER_MTD_L1C_TL_...xml``), baseline 02.01.

    Returns:
        The ``.SAFE`` folder and, per granule, what was written (``granule`` is its folder).
    """
    proc, sensing = "20151231T150000", "2015-12-31T10:16:11.026Z"
    name = f"S2A_OPER_PRD_MSIL1C_PDMC_{proc}_R065_V20151231T101611_20151231T101611.SAFE"
    root = parent / name
    rng = np.random.default_rng(1)
    written: list[SafeProduct] = []
    blocks: list[str] = []
    for tile, zenith in zip(tiles, sun, strict=False):
        stem = f"S2A_OPER_MSI_L1C_TL_SGS__{proc}_A002621_T{tile}"
        gid = f"{stem}_N02.01"
        sp = SafeProduct(root, name, "L1C", "02.01", gid, tile, "2015-12-31T10:16:11.026Z", sensing, 10000, {},
                         zenith, 150.0, "Sentinel-2A")  # fmt: skip
        ids = []
        for band in SAFE_BANDS:
            res = SAFE_NATIVE[band]
            rel = f"GRANULE/{gid}/IMG_DATA/{stem}_{band}.jp2"
            arr = rng.integers(1, 12000, (size * 10 // res,) * 2, dtype=np.uint16)
            write_jp2(root / rel, arr, crs="EPSG:32632", origin=(600000.0, 5200020.0), res=res)
            sp.pixels[rel] = arr
            ids.append(f"            <IMAGE_ID>{stem}_{band}</IMAGE_ID>")
        tl = root / "GRANULE" / gid / f"S2A_OPER_MTD_L1C_TL_SGS__{proc}_A002621_T{tile}.xml"
        compact = replace(sp, name=f"S2A_MSIL1C_20151231T101611_N0201_R065_T{tile}_{proc}.SAFE")
        tl.write_text(_safe_tile_xml(compact, "EPSG:32632", (600000.0, 5200020.0), size, tile_id=gid))
        blocks.append(
            f'          <Granules datastripIdentifier="S2A_OPER_MSI_L1C_DS_SGS__{proc}" granuleIdentifier="{gid}" '
            f'imageFormat="JPEG2000">\n' + "\n".join(ids) + "\n          </Granules>"
        )
        written.append(sp)
    text = _safe_product_xml(replace(written[0], name=compact.name), [])
    start, end = text.index("          <Granule "), text.index("</Granule>") + len("</Granule>")
    text = text[:start] + "\n".join(blocks) + text[end:]
    text = text.replace("psd-14", "psd-12").replace("<PRODUCT_FORMAT>SAFE_COMPACT", "<PRODUCT_FORMAT>SAFE")
    (root / f"S2A_OPER_MTD_SAFL1C_PDMC_{proc}_R065_V20151231T101611_20151231T101611.xml").write_text(text)
    (root / "manifest.safe").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU/>\n')
    return root, written


def zip_safe(safe_dir: Path, dst: Path) -> Path:
    """Zip a SAFE folder the way the Copernicus hubs deliver it: ``<name>.SAFE/...`` entries,
    folders included."""
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted([safe_dir, *safe_dir.rglob("*")]):
            arc = p.relative_to(safe_dir.parent).as_posix()
            zf.write(p, arc + "/" if p.is_dir() else arc)
    return dst


def _safe_product_xml(sp: SafeProduct, image_files: list[str]) -> str:
    lvl = "Level-1C" if sp.level == "L1C" else "Level-2A"
    ns = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_{lvl}.xsd"
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    kind = "L1C" if sp.level == "L1C" else "L2A"
    ptype = "S2MSI1C" if sp.level == "L1C" else "S2MSI2A"
    if sp.level == "L1C":
        quant = f'      <QUANTIFICATION_VALUE unit="none">{sp.quantification}</QUANTIFICATION_VALUE>'
        offs = ""
        if sp.offsets:
            rows = "\n".join(
                f'        <RADIO_ADD_OFFSET band_id="{i}">{sp.offsets[b]}</RADIO_ADD_OFFSET>'
                for i, b in enumerate(SAFE_BANDS)
            )
            offs = f"      <Radiometric_Offset_List>\n{rows}\n      </Radiometric_Offset_List>"
    else:
        quant = (
            "      <QUANTIFICATION_VALUES_LIST>\n"
            f'        <BOA_QUANTIFICATION_VALUE unit="none">{sp.quantification}</BOA_QUANTIFICATION_VALUE>\n'
            '        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
            '        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
            "      </QUANTIFICATION_VALUES_LIST>"
        )
        offs = ""
        if sp.offsets:
            rows = "\n".join(
                f'        <BOA_ADD_OFFSET band_id="{i}">{sp.offsets[b]}</BOA_ADD_OFFSET>'
                for i, b in enumerate(SAFE_BANDS)
            )
            offs = f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{rows}\n      </BOA_ADD_OFFSET_VALUES_LIST>"
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{p}">\n'
        f"          <RESOLUTION>{SAFE_NATIVE[SAFE_BANDS[i]]}</RESOLUTION>\n"
        f"        </Spectral_Information>"
        for i, p in enumerate(SAFE_PHYSICAL_BANDS)
    )
    start = sp.datatake_start
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{lvl}_User_Product xmlns:n1="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{sp.name}</PRODUCT_URI>
      <PROCESSING_LEVEL>{lvl}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>{ptype}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{sp.baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{start}</GENERATION_TIME>
      <PREVIEW_IMAGE_URL>Not applicable</PREVIEW_IMAGE_URL>
      <PREVIEW_GEO_INFO>Not applicable</PREVIEW_GEO_INFO>
      <Datatake datatakeIdentifier="GS2A_{sp.name.split("_")[2]}_036437_{sp.name.split("_")[3]}">
        <SPACECRAFT_NAME>{sp.spacecraft}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>65</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="S2A_OPER_MSI_{kind}_DS_2APS_{start[:10].replace("-", "")}" \
granuleIdentifier="S2A_OPER_MSI_{kind}_TL_2APS_{sp.granule.split("_")[3]}_{sp.granule.split("_")[2]}_T{sp.tile}_\
{sp.name.split("_")[3][:3]}.{sp.name.split("_")[3][3:]}" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
  </n1:General_Info>
  <n1:Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
{quant}
{offs}
      <Reflectance_Conversion>
        <U>0.969</U>
      </Reflectance_Conversion>
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
  </n1:Product_Image_Characteristics>
</n1:{lvl}_User_Product>
"""


def _safe_tile_xml(sp: SafeProduct, crs: str, origin: tuple[float, float], size: int, tile_id: str = "") -> str:
    lvl = "Level-1C" if sp.level == "L1C" else "Level-2A"
    kind = "L1C" if sp.level == "L1C" else "L2A"
    ns = f"https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_{lvl}_Tile_Metadata.xsd"
    bl = sp.name.split("_")[3]
    g = sp.granule.split("_")
    tile_id = tile_id or f"S2A_OPER_MSI_{kind}_TL_2APS_{g[3]}_{g[2]}_T{sp.tile}_{bl}"
    sizes = "\n".join(
        f'        <Size resolution="{r}">\n          <NROWS>{size * 10 // r}</NROWS>\n'
        f"          <NCOLS>{size * 10 // r}</NCOLS>\n        </Size>"
        for r in (10, 20, 60)
    )
    viewing = "\n".join(
        f'        <Mean_Viewing_Incidence_Angle bandId="{i}">\n'
        f'          <ZENITH_ANGLE unit="deg">{3.5 + i / 10}</ZENITH_ANGLE>\n'
        f'          <AZIMUTH_ANGLE unit="deg">{280.0 + i}</AZIMUTH_ANGLE>\n'
        "        </Mean_Viewing_Incidence_Angle>"
        for i in range(13)
    )
    grid = " ".join(["26.1"] * 3)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:{lvl}_Tile_ID xmlns:n1="{ns}">
  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">{tile_id}</TILE_ID>
    <DATASTRIP_ID metadataLevel="Standard">S2A_OPER_MSI_{kind}_DS_2APS</DATASTRIP_ID>
    <DOWNLINK_PRIORITY metadataLevel="Standard">NOMINAL</DOWNLINK_PRIORITY>
    <SENSING_TIME metadataLevel="Standard">{sp.sensing_time}</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {crs[-2:]}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>{crs}</HORIZONTAL_CS_CODE>
{sizes}
      <Geoposition resolution="10">
        <ULX>{origin[0]:.0f}</ULX>
        <ULY>{origin[1]:.0f}</ULY>
        <XDIM>10</XDIM>
        <YDIM>-10</YDIM>
      </Geoposition>
    </Tile_Geocoding>
    <Tile_Angles metadataLevel="Standard">
      <Sun_Angles_Grid>
        <Zenith>
          <COL_STEP unit="m">5000</COL_STEP>
          <ROW_STEP unit="m">5000</ROW_STEP>
          <Values_List>
            <VALUES>{grid}</VALUES>
          </Values_List>
        </Zenith>
      </Sun_Angles_Grid>
      <Mean_Sun_Angle>
        <ZENITH_ANGLE unit="deg">{sp.sun_zenith}</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">{sp.sun_azimuth}</AZIMUTH_ANGLE>
      </Mean_Sun_Angle>
      <Mean_Viewing_Incidence_Angle_List>
{viewing}
      </Mean_Viewing_Incidence_Angle_List>
    </Tile_Angles>
  </n1:Geometric_Info>
  <n1:Quality_Indicators_Info metadataLevel="Standard">
    <Image_Content_QI>
      <CLOUDY_PIXEL_PERCENTAGE>12.5</CLOUDY_PIXEL_PERCENTAGE>
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>
</n1:{lvl}_Tile_ID>
"""


# =================================================================================================
# THEIA: CNES MUSCATE / MAJA Sentinel-2 Level-2A products, as folders or .zip
# =================================================================================================

#: THEIA band names (IMAGE_FILE band_id) at 10 m and at 20 m.
THEIA_R1 = ("B2", "B3", "B4", "B8")
THEIA_R2 = ("B5", "B6", "B7", "B8A", "B11", "B12")


@dataclass
class TheiaProduct:
    """A THEIA product written by :func:`write_theia`.

    Attributes:
        path: the product folder, or the ``.zip`` when zipped.
        identifier: the product id (folder name, IDENTIFIER).
        acquisition: ACQUISITION_DATE as written.
        tile: GEOGRAPHICAL_ZONE as written ("T31TCJ").
        sun: (ZENITH_ANGLE, AZIMUTH_ANGLE) of Mean_Value_List/Sun_Angles.
        pixels: file name inside the product (``..._FRE_B2.tif``, ``MASKS/..._CLM_R1.tif``) -> array.
    """

    path: Path
    identifier: str
    acquisition: str
    tile: str
    sun: tuple[float, float]
    pixels: dict[str, np.ndarray] = field(default_factory=dict)

    def file(self, what: str) -> str:
        """The name inside the product of a band ("FRE_B2") or a mask ("CLM_R1")."""
        sub = "MASKS/" if what[:3] in ("CLM", "MG2", "EDG", "SAT") else ""
        return f"{sub}{self.identifier}_{what}.tif"


def write_cog(path: Path, data: np.ndarray, *, crs: str, origin: tuple[float, float], res: float, nodata=None) -> Path:
    """Write ``data`` (bands, rows, cols) as a Cloud-Optimized GeoTIFF (GDAL's COG driver)."""
    return write_raster(path, data, crs=crs, origin=origin, res=res, nodata=nodata, driver="COG", compress="DEFLATE")


def write_theia(
    parent: Path,
    *,
    acquisition: str = "2018-08-07T10:57:10.459Z",
    platform: str = "SENTINEL2A",
    tile: str = "T31TCJ",
    crs: str = "EPSG:32631",
    origin: tuple[float, float] = (300000.0, 4900020.0),
    size: int = 64,
    kinds: tuple[str, ...] = ("SRE", "FRE"),
    masks: tuple[str, ...] = ("CLM_R1", "CLM_R2", "MG2_R1", "MG2_R2", "EDG_R1", "SAT_R1"),
    quantification: int = 10000,
    sun: tuple[float, float] = (32.26, 150.87),
    declare_nodata: bool = False,
    unlisted: tuple[str, ...] = (),
    zipped: bool = False,
    seed: int = 0,
) -> TheiaProduct:
    """Write a THEIA (MUSCATE format) Sentinel-2 L2A product into ``parent``.

    Args:
        parent: the folder to write into.
        size: 10 m pixels per side (20 m files get half; even).
        kinds: which reflectance files: "SRE" and / or "FRE" (int16 x quantification, -10000
            outside the swath: the first 4 rows).
        masks: the MASKS/ files written (CLM and MG2: 8-bit flags).
        declare_nodata: whether the band GeoTIFFs declare -10000 as nodata (THEIA's files do not
            all; the metadata's SPECIAL_VALUE always says it).
        unlisted: band files (e.g. "FRE_B12") listed in the metadata but not written.
        zipped: zip the folder as THEIA distributes it (``<ID>.zip`` holding ``<ID>/...``) and
            remove the folder.
        The other arguments are the metadata written.
    """
    rng = np.random.default_rng(seed)
    day, clock = acquisition[:10].replace("-", ""), acquisition[11:23].replace(":", "").replace(".", "-")
    ident = f"{platform}_{day}-{clock}_L2A_{tile}_C_V2-2"
    tp = TheiaProduct(parent / ident, ident, acquisition, tile, sun)
    root = tp.path
    for kind in kinds:
        for bands, res in ((THEIA_R1, 10), (THEIA_R2, 20)):
            n = size * 10 // res
            for band in bands:
                what = f"{kind}_{band}"
                arr = rng.integers(-200, 6000, (n, n)).astype(np.int16)
                arr[: 4 * 10 // res] = -10000
                if what in unlisted:
                    continue
                write_cog(root / tp.file(what), arr, crs=crs, origin=origin, res=res,
                          nodata=-10000 if declare_nodata else None)  # fmt: skip
                tp.pixels[tp.file(what)] = arr
    for what in masks:
        res = 10 if what.endswith("R1") else 20
        n = size * 10 // res
        arr = rng.choice(np.array([0, 0, 0, 1 | 2 | 8, 1 | 32, 16, 4, 1 | 2 | 4], np.uint8), (n, n))
        if what.startswith("MG2"):
            arr = rng.choice(np.array([0, 0, 1, 2, 4, 8, 16], np.uint8), (n, n))
        write_cog(root / tp.file(what), arr, crs=crs, origin=origin, res=res)
        tp.pixels[tp.file(what)] = arr
    (root / f"{ident}_MTD_ALL.xml").write_text(_theia_xml(tp, platform, kinds, masks, quantification))
    (root / "DATA").mkdir(exist_ok=True)
    (root / f"{ident}_QKL_ALL.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    if zipped:
        tp.path = parent / f"{ident}.zip"
        with zipfile.ZipFile(tp.path, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(parent).as_posix())
        shutil.rmtree(root)
    return tp


def _theia_xml(tp: TheiaProduct, platform: str, kinds: tuple[str, ...], masks: tuple[str, ...], quant: int) -> str:
    nature = {"SRE": "Surface_Reflectance", "FRE": "Flat_Reflectance"}
    images = "".join(
        f"""
        <Image>
          <Image_Properties>
            <NATURE>{nature[kind]}</NATURE>
            <FORMAT>image/tiff</FORMAT>
            <ENCODING>int16</ENCODING>
            <ENDIANNESS>LittleEndian</ENDIANNESS>
            <COMPRESSION>None</COMPRESSION>
          </Image_Properties>
          <Image_File_List>"""
        + "".join(
            f'\n            <IMAGE_FILE band_id="{b}" band_number="{i}">{tp.file(f"{kind}_{b}")}</IMAGE_FILE>'
            for i, b in enumerate((*THEIA_R1, *THEIA_R2), 1)
        )
        + """
          </Image_File_List>
        </Image>"""
        for kind in kinds
    )
    mask_nature = {"CLM": "Cloud", "MG2": "Geophysics", "EDG": "Edge", "SAT": "Saturation"}
    mask_list = "".join(
        f"""
        <Mask>
          <Mask_Properties>
            <NATURE>{mask_nature[m[:3]]}</NATURE><FORMAT>image/tiff</FORMAT><ENCODING>byte</ENCODING>
          </Mask_Properties>
          <Mask_File_List><MASK_FILE group_id="{m[4:]}">{tp.file(m)}</MASK_FILE></Mask_File_List>
        </Mask>"""
        for m in masks
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Muscate_Metadata_Document>
  <Metadata_Identification>
    <METADATA_FORMAT metadata_profile="GENERIC" version="1.16">METADATA_MUSCATE</METADATA_FORMAT>
    <METADATA_NATURE>Product</METADATA_NATURE>
  </Metadata_Identification>
  <Dataset_Identification>
    <IDENTIFIER>{tp.identifier}</IDENTIFIER>
    <AUTHORITY>THEIA</AUTHORITY>
    <PRODUCER>MUSCATE</PRODUCER>
    <PROJECT>SENTINEL2</PROJECT>
    <GEOGRAPHICAL_ZONE type="Tile">{tp.tile}</GEOGRAPHICAL_ZONE>
  </Dataset_Identification>
  <Product_Characteristics>
    <PRODUCT_ID>{tp.identifier}</PRODUCT_ID>
    <ACQUISITION_DATE>{tp.acquisition}</ACQUISITION_DATE>
    <PRODUCTION_DATE>2018-08-09T03:12:45.233Z</PRODUCTION_DATE>
    <PRODUCT_VERSION>2.2</PRODUCT_VERSION>
    <PRODUCT_LEVEL>L2A</PRODUCT_LEVEL>
    <PLATFORM>{platform}</PLATFORM>
    <SPECTRAL_CONTENT>XS</SPECTRAL_CONTENT>
  </Product_Characteristics>
  <Product_Organisation>
    <Muscate_Product>
      <QUICKLOOK bands_id="B4,B3,B2">{tp.identifier}_QKL_ALL.jpg</QUICKLOOK>
      <Image_List>{images}
      </Image_List>
      <Mask_List>{mask_list}
      </Mask_List>
    </Muscate_Product>
  </Product_Organisation>
  <Geometric_Informations>
    <Mean_Value_List>
      <Sun_Angles>
        <ZENITH_ANGLE unit="deg">{tp.sun[0]}</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">{tp.sun[1]}</AZIMUTH_ANGLE>
      </Sun_Angles>
    </Mean_Value_List>
  </Geometric_Informations>
  <Radiometric_Informations>
    <REFLECTANCE_QUANTIFICATION_VALUE>{quant}</REFLECTANCE_QUANTIFICATION_VALUE>
    <Special_Values_List>
      <SPECIAL_VALUE name="nodata">-10000</SPECIAL_VALUE>
      <SPECIAL_VALUE name="water_vapor_content_nodata">0</SPECIAL_VALUE>
      <SPECIAL_VALUE name="aerosol_optical_thickness_nodata">0</SPECIAL_VALUE>
    </Special_Values_List>
  </Radiometric_Informations>
</Muscate_Metadata_Document>
"""


# =================================================================================================
# STAC: items (and ItemCollections) as Planetary Computer and Element84 earth-search v1 serve them
# =================================================================================================

#: Band -> (earth-search v1 asset key, common name, native resolution).
STAC_S2_BANDS = {
    "B01": ("coastal", "coastal", 60), "B02": ("blue", "blue", 10), "B03": ("green", "green", 10),
    "B04": ("red", "red", 10), "B05": ("rededge1", "rededge", 20), "B06": ("rededge2", "rededge", 20),
    "B07": ("rededge3", "rededge", 20), "B08": ("nir", "nir", 10), "B8A": ("nir08", "nir08", 20),
    "B09": ("nir09", "nir09", 60), "B11": ("swir16", "swir16", 20), "B12": ("swir22", "swir22", 20),
}  # fmt: skip
#: A lon/lat box near 31UFQ: footprints are not read by cloudclear.
_FOOTPRINT = {"type": "Polygon", "coordinates": [[[4.4, 51.4], [4.5, 51.4], [4.5, 51.3], [4.4, 51.3], [4.4, 51.4]]]}
_STAC_EXTENSIONS = [
    f"https://stac-extensions.github.io/{e}/schema.json"
    for e in ("eo/v1.1.0", "projection/v1.1.0", "raster/v1.1.0", "view/v1.0.0", "mgrs/v1.0.0", "processing/v1.1.0")
]


@dataclass
class StacItem:
    """A STAC item written by :func:`write_stac_item` / :func:`write_stac_s1_item`.

    Attributes:
        path: the JSON file.
        item: the item as written.
        pixels: asset key -> the array written to its href (local hrefs only).
    """

    path: Path
    item: dict
    pixels: dict[str, np.ndarray] = field(default_factory=dict)


def _href(kind: str, folder: Path, rel: str, url: str) -> str:
    return {"relative": rel, "absolute": str(folder / rel), "file": (folder / rel).as_uri(), "https": url}[kind]


def write_stac_item(
    parent: Path,
    *,
    style: str = "earth-search",
    hrefs: str = "relative",
    raster_bands: bool = True,
    baseline: str | None = "05.09",
    boa_offset_applied: bool | None = None,
    when: str = "2023-01-05T10:44:34.024000Z",
    satellite: str = "A",
    tile: str = "31UFQ",
    crs_epsg: int = 32631,
    origin: tuple[float, float] = (600000.0, 5700000.0),
    size: int = 60,
    name: str = "item.json",
    seed: int = 0,
) -> StacItem:
    """Write a Sentinel-2 L2A STAC item and its band COGs into ``parent`` (files under ``<id>/``).

    Args:
        style: "earth-search" (Element84 v1 keys ``blue`` .. ``scl``, ``-jp2`` duplicates,
            ``raster:bands`` with scale 0.0001 and offset -0.1 from baseline 04.00) or
            "planetary-computer" (keys ``B01`` .. ``SCL``, ``eo:bands`` names, no ``raster:bands``).
        hrefs: "relative", "absolute", "file" (file:// URIs) or "https" (nothing written: the
            hrefs are the providers' URLs).
        raster_bands: earth-search only: write ``raster:bands`` (scale / offset).
        baseline: ``s2:processing_baseline`` (and the ``N0509`` of ``s2:product_uri``); None: neither.
        boa_offset_applied: ``earthsearch:boa_offset_applied`` (None: not written).
        size: 10 m pixels per side (a multiple of 6).
    """
    rng = np.random.default_rng(seed)
    day = when[:10].replace("-", "")
    clock = when[11:19].replace(":", "")
    zone, band_, square = tile[:2], tile[2], tile[3:]
    nbl = f"N{baseline.replace('.', '')}" if baseline else "N0000"
    uri = f"S2{satellite}_MSIL2A_{day}T{clock}_{nbl}_R008_T{tile}_{day}T141234.SAFE"
    if style == "earth-search":
        item_id = f"S2{satellite}_{tile}_{day}_0_L2A"
        props = {
            "platform": f"sentinel-2{satellite.lower()}", "constellation": "sentinel-2", "instruments": ["msi"],
            "eo:cloud_cover": 12.5, "proj:epsg": crs_epsg, "mgrs:utm_zone": int(zone), "mgrs:latitude_band": band_,
            "mgrs:grid_square": square, "grid:code": f"MGRS-{tile}", "view:sun_azimuth": 162.5,
            "view:sun_elevation": 17.75, "s2:product_type": "S2MSI2A", "s2:product_uri": uri,
        }  # fmt: skip
        url = f"https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/{zone}/{band_}/{square}/{day[:4]}/{int(day[4:6])}/{item_id}"
    else:
        item_id = f"S2{satellite}_MSIL2A_{day}T{clock}_R008_T{tile}_{day}T141234"
        props = {
            "platform": f"Sentinel-2{satellite}", "constellation": "Sentinel 2", "proj:epsg": crs_epsg,
            "s2:mgrs_tile": tile, "s2:product_type": "S2MSI2A", "s2:product_uri": uri,
            "s2:mean_solar_zenith": 72.25, "s2:mean_solar_azimuth": 162.5, "eo:cloud_cover": 12.5,
        }  # fmt: skip
        url = f"https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/{zone}/{band_}/{square}/{uri}/IMG_DATA"
    props["datetime"] = when
    if baseline:
        props["s2:processing_baseline"] = baseline
    else:
        del props["s2:product_uri"]
    if boa_offset_applied is not None:
        props["earthsearch:boa_offset_applied"] = boa_offset_applied
    folder = parent / item_id
    si = StacItem(parent / name, {})
    assets: dict = {}

    def raster(key: str, rel: str, arr: np.ndarray, res: int, extra: dict) -> None:
        f = res // 10
        n = size // f
        if hrefs != "https":
            write_cog(folder / rel, arr, crs=f"EPSG:{crs_epsg}", origin=origin, res=res)
            si.pixels[key] = arr
        assets[key] = {
            "href": _href(hrefs, parent, f"{item_id}/{rel}", f"{url}/{rel}"),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "gsd": res,
            "proj:shape": [n, n],
            "proj:transform": [res, 0.0, origin[0], 0.0, -res, origin[1], 0.0, 0.0, 1.0],
            **extra,
        }

    new = baseline is not None and baseline >= "04.00"
    for band, (es_key, common, res) in STAC_S2_BANDS.items():
        n = size * 10 // res
        arr = rng.integers(1000, 6000, (n, n), dtype=np.uint16)
        arr[0] = 0  # nodata
        if style == "earth-search":
            extra: dict = {"eo:bands": [{"name": es_key, "common_name": common}]}
            if raster_bands:
                rb = {"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": res}
                rb.update({"scale": 0.0001, "offset": -0.1 if new else 0.0})
                extra["raster:bands"] = [rb]
            raster(es_key, f"{band}.tif", arr, res, extra)
            assets[f"{es_key}-jp2"] = {
                "href": f"s3://sentinel-s2-l2a/tiles/{zone}/{band_}/{square}/{day[:4]}/{int(day[4:6])}/{int(day[6:])}/0/{band}.jp2",
                "type": "image/jp2", "roles": ["data"], "eo:bands": [{"name": es_key, "common_name": common}],
            }  # fmt: skip
        else:
            extra = {"eo:bands": [{"name": band, "common_name": common}]}
            raster(band, f"R{res}m/T{tile}_{day}T{clock}_{band}_{res}m.tif", arr, res, extra)
    scl = rng.choice(np.array([4, 4, 5, 6, 8, 9, 3], np.uint8), (size // 2, size // 2))
    if style == "earth-search":
        raster(
            "scl", "SCL.tif", scl, 20, {"raster:bands": [{"nodata": 0, "data_type": "uint8"}]} if raster_bands else {}
        )
        assets["visual"] = {
            "href": f"{url}/TCI.tif",
            "type": "image/tiff",
            "eo:bands": [{"name": "red"}, {"name": "green"}, {"name": "blue"}],
        }
        assets["aot"] = {"href": f"{url}/AOT.tif", "type": "image/tiff", "roles": ["data"]}
        assets["thumbnail"] = {"href": f"{url}/thumbnail.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    else:
        raster("SCL", f"R20m/T{tile}_{day}T{clock}_SCL_20m.tif", scl, 20, {})
        assets["visual"] = {
            "href": f"{url}/R10m/T{tile}_{day}T{clock}_TCI_10m.tif",
            "type": "image/tiff",
            "roles": ["data"],
        }
        assets["WVP"] = {
            "href": f"{url}/R10m/T{tile}_{day}T{clock}_WVP_10m.tif",
            "type": "image/tiff",
            "roles": ["data"],
        }
        assets["safe-manifest"] = {"href": f"{url}/manifest.safe", "type": "application/xml", "roles": ["metadata"]}
    si.item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": _STAC_EXTENSIONS,
        "id": item_id,
        "geometry": _FOOTPRINT,
        "bbox": [3.0, 50.5, 4.5, 51.5],
        "properties": props,
        "links": [],
        "assets": assets,
        "collection": "sentinel-2-l2a",
    }
    si.path.write_text(json.dumps(si.item, indent=1))
    return si


def write_stac_s1_item(
    parent: Path,
    *,
    collection: str = "sentinel-1-rtc",
    unit: str | None = None,
    dtype: str = "float32",
    when: str = "2023-01-05T05:45:35.512000Z",
    hrefs: str = "relative",
    size: int = 60,
    name: str = "s1_item.json",
    seed: int = 0,
) -> StacItem:
    """Write a Sentinel-1 STAC item (Planetary Computer ``sentinel-1-rtc`` style: assets ``vv``,
    ``vh``, float32 gamma-0 in linear power, nodata -32768) and its COGs into ``parent``.

    Args:
        collection: the item's collection ("sentinel-1-grd": uint16 amplitude in earth-search).
        unit: ``raster:bands`` ``unit`` written (None: none).
    """
    rng = np.random.default_rng(seed)
    item_id = f"S1A_IW_GRDH_1SDV_{when[:10].replace('-', '')}T054523_20230105T054548_046641_059703"
    item_id += "_rtc" if "rtc" in collection else ""
    url = f"https://sentinel1euwestrtc.blob.core.windows.net/sentinel1-grd-rtc/GRD/2023/1/5/IW/DV/{item_id}"
    folder = parent / item_id
    si = StacItem(parent / name, {})
    assets = {}
    for pol, scale in (("vv", 0.1), ("vh", 0.02)):
        if dtype.startswith("float"):
            arr = rng.gamma(4.0, scale / 4.0, (size, size)).astype(dtype)
            arr[0] = -32768
        else:
            arr = rng.integers(20, 600, (size, size)).astype(dtype)
        rel = f"measurement/iw-{pol}.rtc.tiff"
        if hrefs != "https":
            write_cog(folder / rel, arr, crs="EPSG:32631", origin=(600000.0, 5700000.0), res=10, nodata=None)
            si.pixels[pol] = arr
        rb: dict = {
            "nodata": -32768 if dtype.startswith("float") else 0,
            "data_type": dtype,
            "spatial_resolution": 10.0,
        }
        if unit:
            rb["unit"] = unit
        assets[pol] = {
            "href": _href(hrefs, parent, f"{item_id}/{rel}", f"{url}/{rel}"),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": f"{pol.upper()}: vertical transmit, {'vertical' if pol == 'vv' else 'horizontal'} receive",
            "proj:shape": [size, size],
            "proj:transform": [10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0],
            "raster:bands": [rb],
            "roles": ["data"],
        }
    si.item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": _STAC_EXTENSIONS,
        "id": item_id,
        "geometry": _FOOTPRINT,
        "properties": {
            "datetime": when,
            "platform": "SENTINEL-1A",
            "constellation": "Sentinel-1",
            "proj:epsg": 32631,
            "sar:polarizations": ["VV", "VH"],
            "sar:product_type": "GRD",
            "sar:instrument_mode": "IW",
        },  # fmt: skip
        "links": [],
        "assets": assets,
        "collection": collection,
    }
    si.path.write_text(json.dumps(si.item, indent=1))
    return si


def write_item_collection(path: Path, items: list[StacItem]) -> Path:
    """Write the items as one ItemCollection (what ``pystac-client``'s ``item_collection()`` saves)."""
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [i.item for i in items]}, indent=1))
    return path
