"""Shared fixtures: small GeoTIFFs with real UTM CRSs written on the fly."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UTM31 = "EPSG:32631"


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM31,
    origin: tuple[float, float] = (600000.0, 5700000.0),
    res: float = 10.0,
    descriptions: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    nodata: float | None = None,
    driver: str = "GTiff",
    compress: str | None = None,
    **options: object,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a raster and return its path; ``options`` are the
    driver's creation options (``QUALITY=100`` for JPEG 2000...)."""
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver=driver,
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], res, res) if crs else None,
        nodata=nodata,
    )
    if driver == "GTiff" and data.shape[1] >= 64 and data.shape[2] >= 64:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    if compress:
        profile["compress"] = compress
    profile.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # crs=None is asked for
        dst = rasterio.open(path, "w", **profile)
    with dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return path


def catalog_layers(path: Path) -> dict[str, pd.DataFrame]:
    """Every layer of a catalog as a plain DataFrame, the ``meta`` table without its run-specific
    ``generation`` row: what two indexes of the same files must agree on."""
    out = {}
    for name, _ in pyogrio.list_layers(path):
        frame = pd.DataFrame(pyogrio.read_dataframe(path, layer=name))
        if name == "meta":
            frame = frame[frame["key"] != "generation"]
        out[name] = frame.reset_index(drop=True)
    return out


def count_opens(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count ``rasterio.open`` calls per absolute path (every read in cloudclear goes through it)."""
    counts: Counter[str] = Counter()
    real = rasterio.open

    def counting(fp, *args, **kwargs):
        counts[os.path.abspath(os.fspath(fp))] += 1
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting)
    return counts


class FakeSource(SimpleNamespace):
    """What :func:`cloudclear.inference.reading.restore_mask_clear` uses of a Source: its sensor,
    whether it is a witness, and its counts."""

    def give_back(self, n: int) -> None:
        self.removed -= n
        self.given_back += n


def s2_data(rng: np.random.Generator, bands: int = 4, size: int = 128) -> np.ndarray:
    return rng.integers(200, 4000, size=(bands, size, size), dtype=np.uint16)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


#: The synthetic series the tests run on (the README's main job ran on it before it moved to the
#: real crop in sample_tiles/32TPS): 480 x 480 px of tile 31UFQ, 10 S2 dates 15 days apart from
#: 2021-04-01 with SCL and truth, 12 S1 dates. ``cloudclear synth DIR --size 480 --dates 10
#: --interval 15 --start 2021-04-01 --seed 42`` writes the same files, byte for byte.
SAMPLE_SERIES = dict(height=480, width=480, n_dates=10, interval_days=15, start="2021-04-01", seed=42)


@pytest.fixture(scope="session")
def sample_series(tmp_path_factory) -> Path:
    """The folder ``T31UFQ`` (``S2/``, ``S1/``, ``truth/``) of :data:`SAMPLE_SERIES`, generated once per
    session (about 7 s of CPU). Tests read it; those that change files copy it first."""
    from cloudclear.synth import generate_series

    root = tmp_path_factory.mktemp("sample_series") / "T31UFQ"
    generate_series(root, **SAMPLE_SERIES)  # type: ignore[arg-type]
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: thread hand-offs cost more than the convolutions, and on a busy 2-core
    machine a second torch thread makes each step many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gapfill_unless_named(args: Sequence[object]) -> list[str]:
    """``infer`` arguments with ``--method gapfill`` added when no method is named: the tests that
    pin gapfill's pixels and figures say so, whatever the default method is (tested on its own)."""
    out = [str(a) for a in args]
    if out and out[0] == "infer" and not {"-m", "--method"} & set(out):
        out += ["--method", "gapfill"]
    return out


def assert_one_line_error(res, *needles: str, stdout_empty: bool = False) -> str:
    """A CliRunner result failed as a user mistake should: exit 1, one line ``cloudclear: error: ...``
    on stderr holding every needle, no traceback. Returns the line."""
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert res.stderr.startswith("cloudclear: error: "), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if stdout_empty:
        assert res.stdout == "", res.stdout
    for n in needles:
        assert n in res.stderr, (n, res.stderr)
    return res.stderr


@pytest.fixture
def small_fs(tmp_path):
    """A factory for small tmpfs volumes (``small_fs(bytes) -> Path``), to fill a disk for real.

    Needs root (mount); skipped otherwise. Volumes are unmounted at teardown.
    """
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mounted: list[Path] = []

    def make(size: int) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> None:
    """Fill the file system holding ``folder`` until at most ``leave`` bytes remain free."""
    import shutil

    free = shutil.disk_usage(folder).free - leave
    path = folder / ".filler"
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 16)
        while free > 0:
            n = min(free, len(chunk))
            try:
                f.write(chunk[:n])
                f.flush()
            except OSError:
                break
            free -= n


def read_only(folder: Path):
    """A context manager making ``folder`` read-only for the duration (root bypasses modes, so
    this uses a read-only bind mount when running as root)."""
    import contextlib
    import os
    import subprocess

    @contextlib.contextmanager
    def ctx():
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"cannot bind-mount read-only: {r.stderr.decode().strip()}")
            r = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
            try:
                yield folder
            finally:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            mode = folder.stat().st_mode
            folder.chmod(0o555)
            try:
                yield folder
            finally:
                folder.chmod(mode)

    return ctx()
