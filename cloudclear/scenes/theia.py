"""THEIA / MAJA Level-2A products: a folder (or a ``.zip`` holding one) with ``*_MTD_ALL.xml``.

The layout (CNES MUSCATE format, e.g. ``SENTINEL2A_20180807-105710-459_L2A_T31TCJ_C_V2-2/``)::

    <ID>_MTD_ALL.xml            Muscate_Metadata_Document: what is read
    <ID>_FRE_B2.tif ... B12     flat reflectance (slope corrected): the bands used
    <ID>_SRE_B2.tif ... B12     surface reflectance: used only where no FRE file exists
    MASKS/<ID>_CLM_R1.tif       cloud mask at 10 m (R2: 20 m): convention "MAJA", the scene's mask
    MASKS/<ID>_MG2_R1.tif       geophysical mask (water, cloud, snow, shadow): convention "MG2",
                                the scene's mask only where the product has no CLM file

From the metadata: ``Product_Characteristics/ACQUISITION_DATE`` (DATETIME), ``PLATFORM``
(SPACECRAFT), ``PRODUCT_LEVEL``, ``Dataset_Identification/GEOGRAPHICAL_ZONE`` (TILE_ID),
``IDENTIFIER`` (PRODUCT), ``Radiometric_Informations/REFLECTANCE_QUANTIFICATION_VALUE``
(scale ``1 / value``, offset 0), ``SPECIAL_VALUE name="nodata"`` (-10000, the bands' nodata where
a file declares none) and ``Geometric_Informations/Mean_Value_List/Sun_Angles`` (SUN_ZENITH,
SUN_AZIMUTH). The bands are int16 reflectance x 10000, one file each.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

from cloudclear.errors import InvalidRasterError, NotASceneError
from cloudclear.gdal import archive_member
from cloudclear.scenes.files import S2_BANDS, FileInfo, normalise_band, read_file_info
from cloudclear.scenes.products import Product

KIND = "THEIA"
MTD_SUFFIX = "_MTD_ALL.xml"
#: THEIA's reflectance nodata (the format's ``SPECIAL_VALUE name="nodata"``).
THEIA_NODATA = -10000.0
SCALE_SOURCE = "MTD_ALL.xml"

_BAND_RE = re.compile(r"_(?P<kind>FRE|SRE)_(?P<band>B\d{1,2}|B8A)\.tiff?$", re.I)
_MASK_RE = re.compile(r"_(?P<kind>CLM|MG2)_(?P<res>R[12])\.tiff?$", re.I)
#: Mask files in the order the scene's mask is chosen: MAJA's cloud mask at 10 m, at 20 m, then
#: the geophysical mask (it has no thin-cloud flag).
_MASK_ORDER = (("CLM", "R1", "MAJA"), ("CLM", "R2", "MAJA"), ("MG2", "R1", "MG2"), ("MG2", "R2", "MG2"))
_PLATFORM_RE = re.compile(r"^SENTINEL-?2([A-D])$", re.I)


def matches(path: Path) -> bool:
    """Whether ``path`` is a THEIA product: a folder holding ``*_MTD_ALL.xml``, or a ``.zip``
    whose product folder (or root) holds one."""
    try:
        if path.is_dir():
            return any(p.name.endswith(MTD_SUFFIX) for p in path.iterdir() if p.is_file())
        if path.suffix.lower() == ".zip" and path.is_file():
            return _zip_mtd(path) is not None
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def read(path: Path) -> list[Product]:
    """The one acquisition of the THEIA product at ``path`` (a folder or a ``.zip``).

    Raises:
        NotASceneError: not a THEIA product, or one of another mission than Sentinel-2.
        InvalidRasterError: metadata missing a field cloudclear needs, or a band file it lists
            absent (the message names the product and what is wrong).
    """
    tree = _open(path)
    meta = _metadata(tree)
    bands = _band_files(tree, meta)
    tags = {
        "CLOUDCLEAR_PRODUCT": f"{tree.container}#{meta.identifier}",
        "DATETIME": meta.datetime,
        "TILE_ID": meta.tile,
        "PROCESSING_LEVEL": meta.level,
        "QUANTIFICATION_VALUE": _number(meta.quantification),
        "SCALE_SOURCE": SCALE_SOURCE,
        "SPACECRAFT": meta.spacecraft,
        "PRODUCT": meta.identifier,
    }
    if meta.sun is not None:
        tags["SUN_ZENITH"], tags["SUN_AZIMUTH"] = (_number(a) for a in meta.sun)
    members: list[FileInfo] = []
    for band, name in bands.items():
        info = _member_info(tree, name)
        if info.count != 1:
            raise InvalidRasterError(f"{tree.label}: {name} has {info.count} bands, a THEIA band file has 1")
        members.append(
            replace(
                info,
                descriptions=(band,),
                scales=(1.0 / meta.quantification,),
                offsets=(0.0,),
                nodata=meta.nodata if info.nodata is None else info.nodata,
                tags={**info.tags, **tags},
            )
        )
    mask = _mask_file(tree)
    if mask is not None:
        name, convention = mask
        info = _member_info(tree, name)
        mask_tags = {k: v for k, v in tags.items() if k not in ("QUANTIFICATION_VALUE", "SCALE_SOURCE")}
        members.append(replace(info, descriptions=(convention,), tags={**info.tags, **mask_tags}))
    return [
        Product(
            kind=KIND,
            path=str(tree.container),
            key=tags["CLOUDCLEAR_PRODUCT"],
            members=tuple(members),
            metadata=(tree.gdal_path(tree.mtd),),
        )
    ]


# -- the product's files, in a folder or a .zip ------------------------------------------------


@dataclass(frozen=True)
class _Tree:
    """A product's files: ``names`` relative to its root (posix), read from a folder or a zip."""

    container: Path
    root: str  # the folder, or the product folder's path inside the zip ("" at its root)
    names: frozenset[str]
    mtd: str
    is_zip: bool

    @property
    def label(self) -> str:
        return str(self.container)

    def gdal_path(self, name: str) -> str:
        if self.is_zip:
            return archive_member(self.container, f"{self.root}/{name}" if self.root else name)
        return os.path.join(self.root, *PurePosixPath(name).parts)

    def read_bytes(self, name: str) -> bytes:
        if self.is_zip:
            with zipfile.ZipFile(self.container) as zf:
                return zf.read(f"{self.root}/{name}" if self.root else name)
        return Path(self.gdal_path(name)).read_bytes()


def _zip_mtd(path: Path) -> str | None:
    """The metadata file inside a zip (at its root or one folder down), or None."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            parts = PurePosixPath(name).parts
            if len(parts) <= 2 and parts[-1].endswith(MTD_SUFFIX):
                return name
    return None


def _open(path: Path) -> _Tree:
    path = Path(os.path.abspath(path))
    if path.is_dir():
        names = set()
        for sub in (path, path / "MASKS"):
            if sub.is_dir():
                names |= {p.relative_to(path).as_posix() for p in sub.iterdir() if p.is_file()}
        mtds = sorted(n for n in names if "/" not in n and n.endswith(MTD_SUFFIX))
        if not mtds:
            raise NotASceneError(f"{path}: no *{MTD_SUFFIX} (not a THEIA product)")
        return _Tree(path, str(path), frozenset(names), mtds[0], False)
    try:
        mtd = _zip_mtd(path)
        with zipfile.ZipFile(path) as zf:
            listed = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidRasterError(f"{path}: not a readable zip ({exc})") from None
    if mtd is None:
        raise NotASceneError(f"{path}: no *{MTD_SUFFIX} in the zip (not a THEIA product)")
    root = str(PurePosixPath(mtd).parent) if "/" in mtd else ""
    prefix = f"{root}/" if root else ""
    names = {n[len(prefix) :] for n in listed if n.startswith(prefix) and not n.endswith("/")}
    return _Tree(path, root, frozenset(names), PurePosixPath(mtd).name, True)


def _member_info(tree: _Tree, name: str) -> FileInfo:
    return read_file_info(tree.gdal_path(name))


# -- the metadata ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    identifier: str
    datetime: str
    tile: str
    level: str
    spacecraft: str
    quantification: float
    nodata: float
    sun: tuple[float, float] | None
    images: dict[str, dict[str, str]]  # nature -> band -> file listed in Product_Organisation


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ElementTree.Element, *path: str) -> ElementTree.Element | None:
    """The first element at ``path`` (local names, namespaces ignored) below ``root``, searched at
    any depth for the first step."""
    found = [e for e in root.iter() if _local(e.tag) == path[0]]
    for step in path[1:]:
        found = [c for e in found for c in e if _local(c.tag) == step]
    return found[0] if found else None


def _text(root: ElementTree.Element, *path: str) -> str | None:
    el = _find(root, *path)
    return el.text.strip() if el is not None and el.text and el.text.strip() else None


def _metadata(tree: _Tree) -> _Meta:
    label = f"{tree.label}: {tree.mtd}"
    try:
        root = ElementTree.fromstring(tree.read_bytes(tree.mtd))
    except (OSError, KeyError, ElementTree.ParseError) as exc:
        raise InvalidRasterError(f"{label}: unreadable metadata ({exc})") from None
    if _local(root.tag) != "Muscate_Metadata_Document":
        raise NotASceneError(f"{label}: root element {_local(root.tag)}, not Muscate_Metadata_Document")

    def need(*path: str) -> str:
        value = _text(root, *path)
        if value is None:
            raise InvalidRasterError(f"{label}: no {'/'.join(path)} in the metadata")
        return value

    platform = need("Product_Characteristics", "PLATFORM")
    m = _PLATFORM_RE.match(platform)
    if not m:
        raise NotASceneError(f"{label}: a THEIA product of {platform}; cloudclear reads Sentinel-2 only")
    when = need("Product_Characteristics", "ACQUISITION_DATE")
    try:
        dt = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRasterError(f"{label}: ACQUISITION_DATE {when!r} is no date") from None
    dt = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    quant = _float(label, "REFLECTANCE_QUANTIFICATION_VALUE", need("REFLECTANCE_QUANTIFICATION_VALUE"))
    if quant <= 0:
        raise InvalidRasterError(f"{label}: REFLECTANCE_QUANTIFICATION_VALUE {quant:g} is not positive")
    nodata = THEIA_NODATA
    for el in root.iter():
        if _local(el.tag) == "SPECIAL_VALUE" and el.get("name") == "nodata" and el.text:
            nodata = _float(label, "SPECIAL_VALUE nodata", el.text)
    sun = None
    zen, az = _text(root, "Mean_Value_List", "Sun_Angles", "ZENITH_ANGLE"), None
    if zen is not None:
        az = _text(root, "Mean_Value_List", "Sun_Angles", "AZIMUTH_ANGLE")
    if zen is not None and az is not None:
        sun = (_float(label, "Sun_Angles ZENITH_ANGLE", zen), _float(label, "Sun_Angles AZIMUTH_ANGLE", az))
    identifier = _text(root, "Dataset_Identification", "IDENTIFIER") or need("Product_Characteristics", "PRODUCT_ID")
    tile = need("Dataset_Identification", "GEOGRAPHICAL_ZONE")
    return _Meta(
        identifier=identifier,
        datetime=dt.isoformat(),
        tile=tile.upper().removeprefix("T"),
        level=(_text(root, "Product_Characteristics", "PRODUCT_LEVEL") or "L2A").upper().replace("LEVEL", "L"),
        spacecraft=f"Sentinel-2{m.group(1).upper()}",
        quantification=quant,
        nodata=nodata,
        sun=sun,
        images=_listed_images(root),
    )


def _listed_images(root: ElementTree.Element) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for image in (e for e in root.iter() if _local(e.tag) == "Image"):
        nature = _text(image, "Image_Properties", "NATURE") or ""
        for f in (e for e in image.iter() if _local(e.tag) == "IMAGE_FILE"):
            band = normalise_band(f.get("band_id"))
            if band and f.text:
                out.setdefault(nature, {})[band] = f.text.strip()
    return out


def _float(label: str, what: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidRasterError(f"{label}: {what} {text!r} is not a number") from None


def _number(value: float) -> str:
    return f"{value:g}" if value == int(value) else repr(value)


def _band_files(tree: _Tree, meta: _Meta) -> dict[str, str]:
    """Band -> file: FRE where the product has FRE files, else SRE; a band the metadata lists
    whose file is absent is an error."""
    found: dict[str, dict[str, str]] = {"FRE": {}, "SRE": {}}
    for name in tree.names:
        m = _BAND_RE.search(name)
        if m and "/" not in name:
            band = normalise_band(m.group("band"))
            if band:
                found[m.group("kind").upper()][band] = name
    kind = "FRE" if found["FRE"] else "SRE"
    nature = {"FRE": "Flat_Reflectance", "SRE": "Surface_Reflectance"}[kind]
    for band, listed in meta.images.get(nature, {}).items():
        if PurePosixPath(listed).as_posix() not in tree.names:
            raise InvalidRasterError(f"{tree.label}: the metadata lists {listed} ({band}) but the file is absent")
    if not found[kind]:
        raise InvalidRasterError(f"{tree.label}: no *_FRE_B*.tif nor *_SRE_B*.tif band file")
    return dict(sorted(found[kind].items(), key=lambda kv: S2_BANDS.index(kv[0])))


def _mask_file(tree: _Tree) -> tuple[str, str] | None:
    """The scene's mask: (file, convention), the first of :data:`_MASK_ORDER` the product has."""
    masks: dict[tuple[str, str], str] = {}
    for name in tree.names:
        m = _MASK_RE.search(name)
        if m:
            masks[(m.group("kind").upper(), m.group("res").upper())] = name
    for kind, res, convention in _MASK_ORDER:
        if (kind, res) in masks:
            return masks[(kind, res)], convention
    return None
