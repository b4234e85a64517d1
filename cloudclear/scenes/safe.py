"""ESA Sentinel-2 SAFE products (Level-1C and Level-2A), as folders or as ``.zip`` files read in
place through GDAL's ``/vsizip/`` (never extracted; members are named
``/vsizip/{/abs/x.zip}/x.SAFE/...``, :func:`cloudclear.gdal.archive_member`).

What is read from where (one :class:`~cloudclear.scenes.products.Product` per granule; products
in the naming used before December 2016, several granules each, are read the same way from their
``S2A_OPER_MTD_SAFL1C_...xml``, ``IMAGE_ID`` lists and ``S2A_OPER_MTD_L1C_TL_...xml``):

- the product XML (``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``): ``PROCESSING_LEVEL``,
  ``PROCESSING_BASELINE``, ``SPACECRAFT_NAME``, ``PRODUCT_START_TIME`` / ``DATATAKE_SENSING_START``,
  the quantification (``QUANTIFICATION_VALUE`` for L1C, ``BOA_QUANTIFICATION_VALUE`` for L2A), the
  per-band offsets from baseline 04.00 (``Radiometric_Offset_List/RADIO_ADD_OFFSET`` for L1C,
  ``BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET`` for L2A, keyed by ``band_id``, which
  ``Spectral_Information_List`` maps to a band name), the ``NODATA`` special value and every
  granule's ``IMAGE_FILE`` list (``Product_Organisation``);
- each granule's ``MTD_TL.xml``: ``SENSING_TIME`` (the scene's time), ``TILE_ID`` (the MGRS tile;
  else the granule or product name's ``_Txxxxx_``) and ``Tile_Angles/Mean_Sun_Angle``;
- the rasters: every band once at its native resolution (L2A: B02, B03, B04, B08 from ``R10m``;
  B05, B06, B07, B8A, B11, B12 from ``R20m``; B01, B09 from ``R60m``), never TCI, AOT or WVP; the
  masks ``SCL_20m`` (L2A), ``QI_DATA/MSK_CLDPRB_20m.jp2`` (L2A) and ``QI_DATA/MSK_CLASSI_B00.jp2``
  (baseline 04.00 on: opaque clouds, cirrus, snow) where present.

Each band member gets ``scales = 1 / Q`` and ``offsets = offset / Q`` (reflectance = DN * scale +
offset) and the tags :mod:`cloudclear.scenes.products` lists. A broken product raises
:class:`~cloudclear.errors.InvalidRasterError` with one line naming it and what is wrong.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cloudclear.errors import InvalidRasterError
from cloudclear.gdal import archive_member
from cloudclear.scenes.drafts import parse_datetime
from cloudclear.scenes.files import S2_BANDS, FileInfo, normalise_band, read_file_info
from cloudclear.scenes.products import Product

#: Native resolution (m) of every band: the one file a SAFE's band is read from.
NATIVE_RESOLUTION: dict[str, int] = {
    **dict.fromkeys(("B02", "B03", "B04", "B08"), 10),
    **dict.fromkeys(("B05", "B06", "B07", "B8A", "B11", "B12"), 20),
    **dict.fromkeys(("B01", "B09", "B10"), 60),
}

#: Mask members: band description -> (file under the granule's QI_DATA, None for SCL from the
#: IMAGE_FILE list). The descriptions name the conventions of :mod:`cloudclear.masks`.
MASK_FILES = {"SCL": None, "MSK_CLDPRB": "MSK_CLDPRB_20m.jp2", "MSK_CLASSI": "MSK_CLASSI_B00.jp2"}

# A product name as ESA writes it (folder or zip): S2A_MSIL2A_20220617T101611_...
_NAME_RE = re.compile(r"^S2[A-D]_(?:MSIL1C|MSIL2A|OPER_PRD_MSIL1C|USER_PRD_MSIL2A)_", re.I)
# The product XML: MTD_MSIL1C.xml (compact naming, from December 2016), S2A_OPER_MTD_SAFL1C_...xml
# in the older multi-granule products (S2A_USER_MTD_SAFL2A_...xml from Sen2Cor on them).
_XML_NAME_RE = re.compile(r"^(?:MTD_MSI(?P<c>L1C|L2A)|S2[A-D]_(?:OPER|USER)_MTD_SAF(?P<o>L1C|L2A)_[^/]*)\.xml$", re.I)
_ZIP_XML_RE = re.compile(r"^(?:(.*/))?([^/]+\.SAFE)/([^/]+\.xml)$", re.I)
# The last part of an IMAGE_FILE entry: ..._B8A_20m, ..._B02 (L1C), ..._SCL_60m.
_IMAGE_RE = re.compile(r"_(?P<what>B\d{2}|B8A|SCL|TCI|AOT|WVP)(?:_(?P<res>\d{2})m)?$", re.I)
_RES_DIR_RE = re.compile(r"^R(\d{2})m$", re.I)
_TILE_RE = re.compile(r"(?:^|_)T(\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?:_|$)")


def matches(path: Path) -> bool:
    """Whether ``path`` is a SAFE product: a ``*.SAFE`` folder holding ``MTD_MSIL1C.xml`` or
    ``MTD_MSIL2A.xml`` (``S2A_OPER_MTD_SAFL1C_*.xml`` before compact naming), or a ``.zip`` whose
    member list (no data read) has ``<name>.SAFE/`` with one of them.

    A folder or zip named as an S2 product (``S2A_MSIL2A_...``) that lacks its XML or cannot be read
    also matches, so that :func:`read` says what is wrong instead of the scan skipping it silently.
    """
    p = Path(path)
    try:
        if p.is_dir():
            if not p.name.upper().endswith(".SAFE"):
                return False
            return any(_xml_level(n) for n in os.listdir(p)) or bool(_NAME_RE.match(p.name))
        if p.suffix.lower() != ".zip" or not p.is_file():
            return False
    except OSError:
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            return bool(_zip_prefixes(zf)) or bool(_NAME_RE.match(p.name))
    except (zipfile.BadZipFile, OSError, ValueError):
        return bool(_NAME_RE.match(p.name))


def read(path: Path) -> list[Product]:
    """The acquisitions (one per granule) of the SAFE folder or zip at ``path``.

    Raises:
        InvalidRasterError: a zip that cannot be read, no product XML, an XML that does not parse
            or lacks a field, a listed band file that is absent or unreadable.
    """
    p = Path(path)
    products: list[Product] = []
    if p.is_dir():
        products += _read_safe(_FolderSource(p))
        return products
    for src in _zip_sources(p):
        products += _read_safe(src)
    return products


# --- where the files are: a folder or a zip -----------------------------------------------------


class _FolderSource:
    """The files of a SAFE folder, by their path inside it."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self.container = str(self.root)
        self.label = str(root)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except OSError as exc:
            raise InvalidRasterError(f"{self.label}: cannot read {rel} ({exc.strerror or exc})") from None

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / rel).iterdir() if p.is_file())
        except OSError:
            return []

    def gdal_path(self, rel: str) -> str:
        return str(self.root / rel)


class _ZipSource:
    """The files of one ``<name>.SAFE/`` folder inside a zip (read through ``/vsizip/``)."""

    def __init__(self, zip_path: Path, zf: zipfile.ZipFile, prefix: str):
        self.container = os.path.abspath(zip_path)
        self.label = f"{zip_path}"
        self.zf = zf
        self.prefix = prefix  # "S2A_....SAFE/" (or "dir/S2A_....SAFE/")
        self.names = set(zf.namelist())

    def exists(self, rel: str) -> bool:
        return self.prefix + rel in self.names

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.zf.read(self.prefix + rel)
        except (zipfile.BadZipFile, zlib.error, OSError, KeyError, NotImplementedError) as exc:
            raise InvalidRasterError(f"{self.label}: cannot read {self.prefix}{rel} from the zip ({exc})") from None

    def listdir(self, rel: str) -> list[str]:
        return self.list_in(self.names, self.prefix + (rel.strip("/") + "/" if rel.strip("/") else ""))

    @staticmethod
    def list_in(names: Iterable[str], head: str) -> list[str]:
        """The file names directly in the zip folder ``head`` (ending with "/")."""
        inside = (n[len(head) :] for n in names if n.startswith(head))
        return sorted(n for n in inside if n and "/" not in n)

    def gdal_path(self, rel: str) -> str:
        return archive_member(self.container, self.prefix + rel)


_Source = _FolderSource | _ZipSource


def _xml_level(name: str) -> str | None:
    """The level ("L1C", "L2A") a product XML's file name says; None for any other name."""
    m = _XML_NAME_RE.match(name)
    return (m.group("c") or m.group("o")).upper() if m else None


def _zip_prefixes(zf: zipfile.ZipFile) -> list[str]:
    """The ``<name>.SAFE/`` folders in a zip that hold a product XML."""
    found = {(m.group(1) or "") + m.group(2) + "/" for n in zf.namelist() if (m := _ZIP_XML_RE.match(n))}
    return sorted(p for p in found if any(_xml_level(n) for n in _ZipSource.list_in(zf.namelist(), p)))


def _zip_sources(path: Path) -> Iterator[_ZipSource]:
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InvalidRasterError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidRasterError(f"{path}: not a readable zip ({exc})") from None
    with zf:
        prefixes = _zip_prefixes(zf)
        if not prefixes:
            raise InvalidRasterError(f"{path}: no <name>.SAFE/MTD_MSIL1C.xml or MTD_MSIL2A.xml in the zip")
        for prefix in prefixes:
            yield _ZipSource(path, zf, prefix)


# --- the product XML and the tile XML -------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _iter(elem: ET.Element, name: str) -> Iterator[ET.Element]:
    """Descendants (and ``elem``) whose local name is ``name``, whatever their namespace."""
    return (e for e in elem.iter() if isinstance(e.tag, str) and _local(e.tag) == name)


def _first(elem: ET.Element, name: str) -> ET.Element | None:
    return next(_iter(elem, name), None)


def _text(elem: ET.Element | None, name: str) -> str | None:
    found = _first(elem, name) if elem is not None else None
    text = (found.text or "").strip() if found is not None else ""
    return text or None


@dataclass
class _Xml:
    """A parsed XML file of a SAFE, able to say what it lacks in one line."""

    src: _Source
    rel: str
    root: ET.Element

    @classmethod
    def parse(cls, src: _Source, rel: str) -> _Xml:
        data = src.read_bytes(rel)
        try:
            return cls(src, rel, ET.fromstring(data))
        except ET.ParseError as exc:
            raise InvalidRasterError(f"{src.label}: {rel} does not parse as XML ({exc})") from None

    def fail(self, what: str) -> InvalidRasterError:
        return InvalidRasterError(f"{self.src.label}: {self.rel} {what}")

    def need(self, name: str, within: ET.Element | None = None) -> str:
        text = _text(self.root if within is None else within, name)
        if text is None:
            raise self.fail(f"has no {name}")
        return text

    def number(self, name: str, within: ET.Element | None = None) -> float:
        text = self.need(name, within)
        try:
            return float(text)
        except ValueError:
            raise self.fail(f"has {name} {text!r}, not a number") from None

    def time(self, name: str) -> datetime | None:
        text = _text(self.root, name)
        if text is None:
            return None
        try:
            return parse_datetime(text)
        except ValueError:
            raise self.fail(f"has {name} {text!r}, not a date") from None


@dataclass(frozen=True)
class _ProductMeta:
    """What the product XML says for all its granules."""

    level: str
    baseline: str
    start: datetime | None
    spacecraft: str | None
    quantification: float
    offset_key: str
    offsets: dict[str, float] | None  # None before baseline 04.00 (no list: 0 for every band)
    nodata: float | None
    xml_name: str


def _baseline(xml: _Xml) -> tuple[str, tuple[int, ...]]:
    text = xml.need("PROCESSING_BASELINE")
    try:
        return text, tuple(int(p) for p in text.split("."))
    except ValueError:
        raise xml.fail(f"has PROCESSING_BASELINE {text!r}, not NN.NN") from None


def _product_meta(xml: _Xml, level: str) -> _ProductMeta:
    stated = xml.need("PROCESSING_LEVEL")
    found = {"LEVEL-1C": "L1C", "LEVEL-2A": "L2A", "LEVEL-2AP": "L2A"}.get(stated.upper())
    if found != level:
        raise xml.fail(f"has PROCESSING_LEVEL {stated!r}, expected Level-{level[1:]}")
    baseline, version = _baseline(xml)
    quant_name = "QUANTIFICATION_VALUE" if level == "L1C" else "BOA_QUANTIFICATION_VALUE"
    quant = xml.number(quant_name)
    if not quant > 0:
        raise xml.fail(f"has {quant_name} {quant:g}, not a positive number")
    list_name, item = (
        ("Radiometric_Offset_List", "RADIO_ADD_OFFSET")
        if level == "L1C"
        else ("BOA_ADD_OFFSET_VALUES_LIST", "BOA_ADD_OFFSET")
    )
    offsets = _offsets(xml, list_name, item)
    if offsets is None and version >= (4, 0):
        raise xml.fail(f"has no {list_name} (processing baseline {baseline} states an offset per band)")
    nodata = None
    for sv in _iter(xml.root, "Special_Values"):
        if (_text(sv, "SPECIAL_VALUE_TEXT") or "").upper() == "NODATA":
            try:
                nodata = float(_text(sv, "SPECIAL_VALUE_INDEX") or "")
            except ValueError:
                raise xml.fail("has a NODATA Special_Values entry without a numeric SPECIAL_VALUE_INDEX") from None
    start = xml.time("PRODUCT_START_TIME") or xml.time("DATATAKE_SENSING_START")
    return _ProductMeta(
        level=level,
        baseline=baseline,
        start=start,
        spacecraft=_text(xml.root, "SPACECRAFT_NAME"),
        quantification=quant,
        offset_key=item,
        offsets=offsets,
        nodata=nodata,
        xml_name=Path(xml.rel).name,
    )


def _band_names(xml: _Xml) -> dict[str, str]:
    """``band_id`` -> band name, from ``Spectral_Information_List`` (bandId -> physicalBand) where
    the XML has it, else the specification's order (0..12 = B01 .. B8A, B09 .. B12)."""
    names = {str(i): b for i, b in enumerate(S2_BANDS)}
    for info in _iter(xml.root, "Spectral_Information"):
        bid, band = info.get("bandId"), normalise_band(info.get("physicalBand"))
        if bid is not None and band:
            names[bid.strip()] = band
    return names


def _offsets(xml: _Xml, list_name: str, item: str) -> dict[str, float] | None:
    found = _first(xml.root, list_name)
    if found is None:
        return None
    names = _band_names(xml)
    out: dict[str, float] = {}
    for e in _iter(found, item):
        bid = (e.get("band_id") or "").strip()
        if bid not in names:
            raise xml.fail(f"has an {item} with band_id {bid!r}, no band of Spectral_Information_List")
        try:
            out[names[bid]] = float((e.text or "").strip())
        except ValueError:
            raise xml.fail(f"has {item} {e.text!r} for band_id {bid}, not a number") from None
    return out


# --- granules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Granule:
    folder: str  # the folder name under GRANULE/
    files: tuple[str, ...]  # IMAGE_FILE entries with their .jp2


def _granules(xml: _Xml) -> list[_Granule]:
    out: list[_Granule] = []
    for g in (*_iter(xml.root, "Granule"), *_iter(xml.root, "Granules")):
        gid = (g.get("granuleIdentifier") or "").strip()
        files: list[str] = []
        for e in g:
            text = (e.text or "").strip()
            if not text:
                continue
            if _local(e.tag) == "IMAGE_FILE":
                files.append(text)
            elif _local(e.tag) == "IMAGE_ID" and gid:  # products before compact naming (2016)
                files.append(f"GRANULE/{gid}/IMG_DATA/{text}")
        files = [f if f.lower().endswith(".jp2") else f + ".jp2" for f in files]
        folders = {f.split("/")[1] for f in files if f.startswith("GRANULE/") and f.count("/") >= 2}
        if not files:
            raise xml.fail(f"lists no IMAGE_FILE for granule {gid or '?'} (Product_Organisation)")
        if len(folders) != 1:
            raise xml.fail(f"lists IMAGE_FILE entries of granule {gid or '?'} outside one GRANULE/<granule>/ folder")
        out.append(_Granule(folders.pop(), tuple(files)))
    if not out:
        raise xml.fail("lists no granule (Product_Organisation/Granule_List)")
    return out


def _tile_xml(src: _Source, granule: _Granule) -> _Xml:
    gdir = f"GRANULE/{granule.folder}"
    rel = f"{gdir}/MTD_TL.xml"
    if not src.exists(rel):
        # Products before compact naming call it S2A_OPER_MTD_L1C_TL_....xml.
        others = [n for n in src.listdir(gdir) if n.lower().endswith(".xml") and "MTD" in n.upper()]
        if not others:
            raise InvalidRasterError(f"{src.label}: granule {granule.folder} has no MTD_TL.xml")
        rel = f"{gdir}/{others[0]}"
    return _Xml.parse(src, rel)


def _choose_files(granule: _Granule, level: str) -> dict[str, str]:
    """Band or SCL -> the file it is read from: the native resolution, else the finest listed."""
    found: dict[str, list[tuple[int, str]]] = {}
    for rel in granule.files:
        m = _IMAGE_RE.search(Path(rel).stem)
        if not m:
            continue
        what = m.group("what").upper()
        if what in ("TCI", "AOT", "WVP") or (what == "SCL" and level != "L2A"):
            continue
        parent = _RES_DIR_RE.match(Path(rel).parent.name)
        res = int(m.group("res") or (parent.group(1) if parent else NATIVE_RESOLUTION.get(what, 20)))
        found.setdefault(what, []).append((res, rel))
    chosen: dict[str, str] = {}
    for what, options in found.items():
        native = NATIVE_RESOLUTION.get(what, 20)
        chosen[what] = min(options, key=lambda o: (o[0] != native, o[0], o[1]))[1]
    order = [*S2_BANDS, "SCL"]
    return {w: chosen[w] for w in order if w in chosen}


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")


def _read_safe(src: _Source) -> list[Product]:
    xml_rels = [(lvl, n) for n in src.listdir("") if (lvl := _xml_level(n))]
    if not xml_rels:
        raise InvalidRasterError(f"{src.label}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml (not a complete SAFE product)")
    if len(xml_rels) > 1:
        names = " and ".join(n for _, n in xml_rels)
        raise InvalidRasterError(f"{src.label}: holds {names} (one product XML per SAFE)")
    level, xml_name = xml_rels[0]
    xml = _Xml.parse(src, xml_name)
    meta = _product_meta(xml, level)
    product_name = _text(xml.root, "PRODUCT_URI") or Path(src.label).name
    return [_read_granule(src, xml, meta, g, product_name) for g in _granules(xml)]


def _read_granule(src: _Source, xml: _Xml, meta: _ProductMeta, granule: _Granule, product_name: str) -> Product:
    tl = _tile_xml(src, granule)
    when = tl.time("SENSING_TIME") or meta.start
    if when is None:
        raise tl.fail(f"has no SENSING_TIME and {xml.rel} no PRODUCT_START_TIME")
    tile = None
    for text in (_text(tl.root, "TILE_ID"), granule.folder, product_name):
        m = _TILE_RE.search(text or "")
        if m:
            tile = m.group(1)
            break
    if tile is None:
        raise tl.fail("has no TILE_ID naming an MGRS tile (_Txxxxx_), nor has the granule or product name")
    sun = _first(tl.root, "Mean_Sun_Angle")
    if sun is None:
        raise tl.fail("has no Tile_Angles/Mean_Sun_Angle")
    zenith, azimuth = tl.number("ZENITH_ANGLE", sun), tl.number("AZIMUTH_ANGLE", sun)

    key = f"{src.container}#{granule.folder}"
    common = {
        "CLOUDCLEAR_PRODUCT": key,
        "DATETIME": _iso(when),
        "TILE_ID": tile,
        "PROCESSING_LEVEL": meta.level,
        "PROCESSING_BASELINE": meta.baseline,
        "SUN_ZENITH": _fmt(zenith),
        "SUN_AZIMUTH": _fmt(azimuth),
    }
    if meta.spacecraft:
        common["SPACECRAFT"] = meta.spacecraft

    members: list[FileInfo] = []
    files = _choose_files(granule, meta.level)
    if not any(b in files for b in S2_BANDS):
        raise xml.fail(f"lists no band file (B01 .. B12) for granule {granule.folder}")
    for what, rel in files.items():
        if what == "SCL":
            continue
        if meta.offsets is not None and what not in meta.offsets:
            raise xml.fail(f"has no {meta.offset_key} for band {what}")
        add = meta.offsets[what] if meta.offsets is not None else 0.0
        info = _member(src, rel, xml.rel)
        q = meta.quantification
        members.append(
            replace(
                info,
                descriptions=(what,) * info.count,
                scales=(1.0 / q,) * info.count,
                offsets=(add / q,) * info.count,
                nodata=meta.nodata if meta.nodata is not None else info.nodata,
                tags={
                    **info.tags,
                    **common,
                    "QUANTIFICATION_VALUE": _fmt(q),
                    meta.offset_key: _fmt(add),
                    "SCALE_SOURCE": meta.xml_name,
                },
            )
        )
    qi = f"GRANULE/{granule.folder}/QI_DATA"
    for desc, name in MASK_FILES.items():
        mask_rel = files.get("SCL") if name is None else f"{qi}/{name}"
        if mask_rel is None or (name is not None and not src.exists(mask_rel)):
            continue
        info = _member(src, mask_rel, xml.rel)
        members.append(replace(info, descriptions=(desc,) * info.count, tags={**info.tags, **common}))
    metadata = (src.gdal_path(xml.rel), src.gdal_path(tl.rel))
    return Product(kind="SAFE", path=src.container, key=key, members=tuple(members), metadata=metadata)


def _member(src: _Source, rel: str, listed_in: str) -> FileInfo:
    if not src.exists(rel):
        raise InvalidRasterError(f"{src.label}: {rel} is listed in {listed_in} but absent")
    path = src.gdal_path(rel)
    try:
        return read_file_info(path)
    except InvalidRasterError as exc:
        reason = str(exc).replace(f"{path}: ", "").splitlines()[0]
        raise InvalidRasterError(f"{src.label}: {rel}: {reason}") from None
