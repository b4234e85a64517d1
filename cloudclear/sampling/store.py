"""The patch store: compressed uint16 patches with random access, and the Dataset training reads.

A store is a folder::

    STORE/
      store.json      manifest, written last: format, layout, bands, arrays, encodings, counts;
                      "stand_ins" ({"B08": "B8A"}: B8A read where a scene lacks B08) and
                      "stand_ins_used" (scenes and samples read so)
      patches.bin     every sample's arrays, each byte-shuffled and zlib-compressed
      index.npy       (samples, arrays, 2) int64: offset and length of each array in patches.bin
      split.npy       (samples,) uint8: 0 train, 1 val, 2 test
      hours.npy       (samples, slots) float32: each slot's hours from the reference date
      samples.gpkg    one row per sample (id, split, footprint, dates, cloud %, source files;
                      SLOT_stand_ins "B8A>B08" where a stand-in was read)

A run writes into ``.STORE.partial-PID`` and renames it to ``STORE`` after the manifest, so an
interrupted run leaves nothing that looks complete. :class:`PatchDataset` opens the data file
lazily in each process (a DataLoader worker gets its own descriptor after the fork) and holds no
rtree, GDAL handle or lock, so it pickles.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear.errors import StoreError, StoreNotFoundError

FORMAT = "cloudclear-patches/1"
SPLITS = ("train", "val", "test")
MANIFEST = "store.json"
DATA = "patches.bin"
INDEX = "index.npy"
SPLIT = "split.npy"
HOURS = "hours.npy"
METADATA = "samples.gpkg"
#: S2 reflectance = DN * 1e-4 (0 = nodata); S1 dB = DN * 0.002 - 60; DEM metres = DN * 0.2 - 1000.
ENCODINGS: dict[str, dict[str, float]] = {
    "S2": {"scale": 1e-4, "offset": 0.0, "nodata": 0},
    "S1": {"scale": 0.002, "offset": -60.0, "nodata": 0},
    "DEM": {"scale": 0.2, "offset": -1000.0, "nodata": 0},
}


def encode_values(values: np.ndarray, valid: np.ndarray, sensor: str) -> np.ndarray:
    """Physical values (reflectance, dB, metres) to uint16 DN; invalid pixels and NaN become 0."""
    enc = ENCODINGS[sensor]
    with np.errstate(invalid="ignore"):
        dn = np.rint((values - enc["offset"]) / enc["scale"])
    dn = np.clip(np.nan_to_num(dn, nan=0.0), 1, 65535).astype(np.uint16)
    dn[..., ~valid] = 0
    return dn


def decode_values(dn: np.ndarray, sensor: str) -> tuple[np.ndarray, np.ndarray]:
    """uint16 DN to float32 physical values (0 where nodata) and where they are valid."""
    enc = ENCODINGS[sensor]
    valid = dn != enc["nodata"]
    out = dn.astype(np.float32) * np.float32(enc["scale"]) + np.float32(enc["offset"])
    out[~valid] = 0.0
    return out, valid.all(axis=0) if out.ndim == 3 else valid


def pack(arr: np.ndarray, level: int = 3) -> bytes:
    """Byte-shuffle (all high bytes, then all low bytes) and zlib-compress an array."""
    a = np.ascontiguousarray(arr)
    if a.itemsize > 1:
        a = a.view(np.uint8).reshape(-1, a.itemsize).T
    return zlib.compress(np.ascontiguousarray(a).tobytes(), level)


def unpack(blob: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray:
    dt = np.dtype(dtype)
    raw = np.frombuffer(zlib.decompress(blob), np.uint8)
    if dt.itemsize > 1:
        raw = raw.reshape(dt.itemsize, -1).T
    return np.ascontiguousarray(raw).view(dt).reshape(shape)


@dataclass(frozen=True)
class ArraySpec:
    """One array every sample holds.

    Attributes:
        name: key, e.g. ``"t-1"``, ``"t-1.mask"``, ``"t-1.s1"``, ``"t.gap"``.
        slot: the layout slot it belongs to.
        kind: ``"S2"``, ``"S1"``, ``"DEM"`` (encoded values), ``"mask"`` (MaskClass codes) or
            ``"gap"`` (1 where a real mask was pasted).
        dtype: numpy dtype name.
        shape: array shape.
    """

    name: str
    slot: str
    kind: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "slot": self.slot, "kind": self.kind, "dtype": self.dtype, "shape": list(self.shape)}


class StoreWriter:
    """Append samples to a store being written in a partial folder; :meth:`commit` makes it a store."""

    def __init__(self, folder: Path, specs: Sequence[ArraySpec]):
        self.folder = folder
        self.specs = list(specs)
        folder.mkdir(parents=True)
        self._data = open(folder / DATA, "wb")  # noqa: SIM115 - closed in commit / abort
        self._offset = 0
        self._index: list[list[tuple[int, int]]] = []
        self._splits: list[int] = []
        self._hours: list[list[float]] = []

    def append(self, blobs: Sequence[bytes], split: int, hours: Sequence[float]) -> int:
        """Write one sample's packed arrays (in ``specs`` order); returns its index."""
        entry = []
        for b in blobs:
            self._data.write(b)
            entry.append((self._offset, len(b)))
            self._offset += len(b)
        self._index.append(entry)
        self._splits.append(split)
        self._hours.append(list(hours))
        return len(self._index) - 1

    def __len__(self) -> int:
        return len(self._index)

    def commit(self, manifest: dict[str, Any], metadata: Any) -> None:
        """Write the index, the metadata table and, last, the manifest."""
        self._data.flush()
        os.fsync(self._data.fileno())
        self._data.close()
        index = np.array(self._index, np.int64).reshape(len(self._index), len(self.specs), 2)
        np.save(self.folder / INDEX, index)
        np.save(self.folder / SPLIT, np.array(self._splits, np.uint8))
        np.save(self.folder / HOURS, np.array(self._hours, np.float32).reshape(len(self._index), -1))
        write_metadata(metadata, self.folder / METADATA)
        manifest = {**manifest, "format": FORMAT, "complete": True, "arrays": [s.to_dict() for s in self.specs]}
        (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")

    def abort(self) -> None:
        if not self._data.closed:
            self._data.close()


def write_metadata(frame: Any, path: Path) -> None:
    """The samples table as a GeoPackage, with GDAL's timestamps fixed so equal runs give equal files."""
    import pyogrio

    options = {"OGR_CURRENT_DATE": "2000-01-01T00:00:00Z"}
    pyogrio.set_gdal_config_options(options)
    try:
        frame.to_file(path, layer="samples", driver="GPKG", engine="pyogrio")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


class PatchStore:
    """A complete patch store opened for reading.

    Attributes:
        path: the store folder.
        manifest: the parsed ``store.json``.
        specs: the arrays each sample holds.
        split: (samples,) split code per sample (0 train, 1 val, 2 test).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise StoreNotFoundError(f"{self.path}: no patch store here (build one with `cloudclear sample`)")
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            partial = " (it looks like an interrupted `cloudclear sample` run)" if (self.path / DATA).exists() else ""
            raise StoreError(f"{self.path}: not a complete cloudclear patch store: no {MANIFEST}{partial}")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{mpath}: unreadable manifest ({exc})") from None
        if self.manifest.get("format") != FORMAT or not self.manifest.get("complete"):
            raise StoreError(f"{mpath}: not a complete {FORMAT} store (format {self.manifest.get('format')!r})")
        self.specs = [
            ArraySpec(a["name"], a["slot"], a["kind"], a["dtype"], tuple(a["shape"])) for a in self.manifest["arrays"]
        ]
        try:
            self.index = np.load(self.path / INDEX)
            self.split = np.load(self.path / SPLIT)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path}: cannot read the index ({exc})") from None
        n = int(self.manifest["count"])
        if self.index.shape != (n, len(self.specs), 2) or self.split.shape != (n,):
            raise StoreError(f"{self.path}: index holds {self.index.shape[0]} samples, the manifest says {n}")
        size = (self.path / DATA).stat().st_size if (self.path / DATA).exists() else -1
        end = int((self.index[..., 0] + self.index[..., 1]).max()) if n else 0
        if size < end:
            raise StoreError(f"{self.path / DATA}: truncated ({size} bytes, the index needs {end})")
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = -1
        return state

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and getattr(self, "_pid", -1) == os.getpid():
            os.close(fd)
        self._fd = None

    def _file(self) -> int:
        # One descriptor per process: a DataLoader worker forked with the parent's must not share
        # its offset (pread has none, but a closed-on-exit parent descriptor would be stale).
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path / DATA, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    @property
    def layout(self) -> Any:
        from cloudclear.layouts import parse_layout

        return parse_layout(self.manifest["layout"], f"{self.path / MANIFEST}")

    @property
    def bands(self) -> list[str]:
        return list(self.manifest["bands"])

    def indices(self, split: str | None) -> np.ndarray:
        """Sample indices of a split (all for None)."""
        if split is None:
            return np.arange(len(self))
        if split not in SPLITS:
            raise StoreError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == SPLITS.index(split))

    def read(self, i: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The raw arrays of sample ``i`` (uint16 DN, uint8 masks), by name."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range (store holds {len(self)})")
        fd = self._file()
        out = {}
        for k, spec in enumerate(self.specs):
            if names is not None and spec.name not in names:
                continue
            off, length = self.index[i, k]
            blob = os.pread(fd, int(length), int(off))
            if len(blob) != length:
                raise StoreError(f"{self.path / DATA}: short read for sample {i}")
            out[spec.name] = unpack(blob, spec.dtype, spec.shape)
        return out

    def metadata(self) -> Any:
        """The samples table (a GeoDataFrame, footprints in EPSG:4326)."""
        import geopandas as gpd

        return gpd.read_file(self.path / METADATA, layer="samples", engine="pyogrio")


class PatchDataset:
    """Samples of a patch store as float arrays, for a PyTorch DataLoader (map-style).

    Each item is a dict. Per S2 slot ``s``:

    - ``s``: (bands, H, W) float32 reflectance of what a network may see: valid, clear and outside
      any pasted gap; 0 elsewhere (as :mod:`cloudclear.inference` feeds its networks);
    - ``s.valid``: (H, W) bool, where ``s`` holds a value;
    - ``s.hours``: float32 hours from the reference date;
    - ``s.s1`` and ``s.s1.valid`` where the slot carries S1 (dB, 0 where nodata);
    - ``s.gap``: (H, W) bool, the pasted mask, for slots with simulated gaps.

    Per target slot (the layout's target, or every S2 slot of a sequence layout), ``s.truth``
    (bands, H, W) and ``s.truth.valid`` (valid and clear in the acquisition's own mask). S1 slots
    give ``s`` and ``s.valid`` in dB; a DEM slot gives metres. ``index`` is the sample's index.

    Args:
        store: a store folder or an open :class:`PatchStore`.
        split: ``"train"``, ``"val"``, ``"test"`` or None for every sample.
        transform: called on each item dict before it is returned.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | PatchStore,
        split: str | None = "train",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ):
        self.store = store if isinstance(store, PatchStore) else PatchStore(store)
        self.split = split
        self.ids = self.store.indices(split)
        self.transform = transform
        self.layout = self.store.layout
        self._hours = np.load(self.store.path / HOURS)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> dict[str, Any]:
        from cloudclear import masks

        if not -len(self) <= k < len(self):
            raise IndexError(f"item {k} out of range ({len(self)} in split {self.split})")
        i = int(self.ids[k])
        raw = self.store.read(i)
        item: dict[str, Any] = {"index": i}
        targets = set(self.layout.targets)
        for n, s in enumerate(self.layout.slots):
            if s.sensor in ("S1", "DEM"):
                values, valid = decode_values(raw[s.name], s.sensor)
                item[s.name], item[f"{s.name}.valid"] = values, valid
                continue
            values, valid = decode_values(raw[s.name], "S2")
            cls = raw[f"{s.name}.mask"]
            clear = valid & masks.is_clear(cls)
            seen = clear.copy()
            if f"{s.name}.gap" in raw:
                gap = raw[f"{s.name}.gap"].astype(bool)
                item[f"{s.name}.gap"] = gap
                seen &= ~gap
            if s.name in targets:
                item[f"{s.name}.truth"] = values.copy()
                item[f"{s.name}.truth.valid"] = clear
            item[s.name] = np.where(seen[None], values, np.float32(0.0))
            item[f"{s.name}.valid"] = seen
            item[f"{s.name}.hours"] = np.float32(self._hours[i, n])
            if f"{s.name}.s1" in raw:
                v1, ok1 = decode_values(raw[f"{s.name}.s1"], "S1")
                item[f"{s.name}.s1"], item[f"{s.name}.s1.valid"] = v1, ok1
        return self.transform(item) if self.transform else item
