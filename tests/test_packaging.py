"""The shipped checkpoints travel with the package: found by name in an editable checkout and after
a plain (non-editable) install of the wheel, from any working folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "models").glob("*.safetensors"))
SAMPLE = ROOT / "sample_tiles" / "32TPS"
#: A sane wheel: the code and the shipped checkpoints (about 9 MB of weights), nothing else.
MAX_WHEEL_MB = 25


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_names_every_package_and_the_models():
    from setuptools import find_packages

    config = _pyproject()["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), include=["cloudclear", "cloudclear.*"]))
    assert set(config["packages"]) == found | {"cloudclear._models"}
    assert config["package-dir"] == {"cloudclear._models": "models"}
    assert (ROOT / "models" / "__init__.py").is_file()
    assert {"*.safetensors", "*.json"} <= set(config["package-data"]["cloudclear._models"])


def test_shipped_models_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from cloudclear.nets.card import find_checkpoint, list_checkpoints, shipped_folder

    assert SHIPPED, "no checkpoint in models/"
    monkeypatch.chdir(tmp_path)  # no ./models here
    folder = shipped_folder()
    assert folder is not None and folder.resolve() == (ROOT / "models").resolve()
    for name in SHIPPED:
        found = find_checkpoint(name)
        assert found.resolve() == (ROOT / "models" / f"{name}.safetensors").resolve()
    assert {p.stem for p, _ in list_checkpoints()} >= set(SHIPPED)


def test_a_models_folder_in_the_working_folder_comes_first(tmp_path, monkeypatch):
    from cloudclear.nets.card import find_checkpoint, list_checkpoints

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    mine = tmp_path / "models" / "mine.safetensors"
    shutil.copyfile(ROOT / "models" / f"{SHIPPED[0]}.safetensors", mine)
    assert find_checkpoint("mine").resolve() == mine.resolve()
    assert find_checkpoint(SHIPPED[-1]).resolve() == (ROOT / "models" / f"{SHIPPED[-1]}.safetensors").resolve()
    assert {p.stem for p, _ in list_checkpoints()} == {"mine", *SHIPPED}


def _run(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_infer_with_a_shipped_model_by_name(tmp_path):
    """Build the wheel (offline, no build isolation), install it into a folder of its own, and run
    the README's index + infer from a folder outside the repository with ``--method NAME``."""
    pytest.importorskip("setuptools")
    if not SAMPLE.is_dir():
        pytest.skip("no sample_tiles/32TPS")
    # build from a copy: the checkout's build/ and egg-info are left alone
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cloudclear", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("cloudclear-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in SHIPPED:
        assert f"cloudclear/_models/{name}.safetensors" in names and f"cloudclear/_models/{name}.json" in names
    assert not [n for n in names if n.startswith(("tests/", "sample_tiles/", "models/", "bench/"))]
    from cloudclear.metrics import native

    # Where the checkout's install compiled SSIM's kernel, the wheel's build compiles it too.
    kernel = [n for n in names if n.startswith("cloudclear/metrics/_ssim.") and n.endswith(".so")]
    assert bool(kernel) == native.available(), names
    size_mb = wheel.stat().st_size / 1e6
    print(f"wheel {wheel.name}: {size_mb:.1f} MB, {len(names)} files")
    assert size_mb < MAX_WHEEL_MB

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(["-c", "import cloudclear; print(cloudclear.__file__)"], work, site).stdout.strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), where  # not the editable checkout
    loaded = _run(["-c", "from cloudclear.metrics import native; print(native.library())"], work, site).stdout
    assert (str(site) in loaded) == bool(kernel), loaded  # the wheel's own kernel, not the checkout's

    listed = json.loads(_run(["-m", "cloudclear.cli", "models", "--json"], work, site).stdout)
    paths = {Path(c["path"]).stem: Path(c["path"]) for c in listed["checkpoints"]}
    assert set(paths) == set(SHIPPED)
    assert all(p.resolve().is_relative_to(site.resolve()) for p in paths.values()), paths

    _run(["-m", "cloudclear.cli", "-q", "index", str(SAMPLE), "-c", "out/sample.gpkg"], work, site)
    name = "refine-small" if "refine-small" in SHIPPED else SHIPPED[0]
    _run(
        ["-m", "cloudclear.cli", "-q", "infer", "-c", "out/sample.gpkg", "-d", "2022-06-15"]
        + ["-o", "out/x.tif", "--method", name],
        work,
        site,
    )
    import numpy as np
    import rasterio

    with rasterio.open(work / "out" / "x.tif") as src:
        assert src.tags()["CLOUDCLEAR_METHOD"] == f"{name}.safetensors"
        assert src.count == 4 and src.dtypes[0] == "uint16"
        data = src.read()
    assert (data > 0).mean() > 0.9 and np.median(data[data > 0]) > 100
    with rasterio.open(work / "out" / "x_status.tif") as src:
        assert src.tags()["CLOUDCLEAR_ROLE"] == "status"
