"""GDAL settings applied by the library for the duration of one operation (never through
``os.environ``, which would leak into the caller's process).

Every block cloudclear reads is read once (strips, patches), so GDAL's default block cache (5 % of
RAM) only holds memory; each operation states the cache it needs. A user's own ``GDAL_CACHEMAX``
(environment variable) wins.
"""

from __future__ import annotations

import os
from typing import Any

#: Block cache per operation, in MiB: a strip of a 13-band tile for scoring and inference, less for
#: sampling, masking and synthetic series, which read or write small windows.
CACHE_MB = {"score": 512, "infer": 512, "sample": 256, "mask": 256, "index": 256, "synth": 256}


def gdal_env(operation: str, **options: Any) -> Any:
    """A ``rasterio.Env`` with the block cache stated for ``operation`` (a key of :data:`CACHE_MB`)
    and any further GDAL options; use as ``with gdal_env("infer"): ...``."""
    import rasterio

    quiet_libtiff()
    settings: dict[str, Any] = dict(options)
    if "GDAL_CACHEMAX" not in os.environ:
        settings["GDAL_CACHEMAX"] = CACHE_MB[operation] * 1024 * 1024
    return rasterio.Env(**settings)


_LIBTIFF_QUIET = False


def quiet_libtiff() -> None:
    """Stop libtiff printing errors that have no file handle straight to stderr.

    On a full disk GDAL's TIFF I/O layer reports ``_tiffWriteProc: No space left on device.`` through
    libtiff's process-wide handler, which prints below Python (no logging, no redirection), several
    times per failed write. The same failure reaches cloudclear as an exception and becomes one
    line naming the file; these extra lines only bury it. Errors GDAL routes per file are unaffected.
    A no-op where the libtiff GDAL uses cannot be found.
    """
    global _LIBTIFF_QUIET
    if _LIBTIFF_QUIET:
        return
    _LIBTIFF_QUIET = True
    import ctypes

    import rasterio  # noqa: F401 - loads GDAL and the libtiff it links

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libtiff" in line}
    except OSError:
        return
    for path in sorted(p for p in paths if p.startswith("/")):
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler(None)
        except (OSError, AttributeError):
            continue


# --- paths GDAL reads that are not plain files: members of a .zip, URLs -------------------------

#: GDAL virtual file system prefixes cloudclear writes into catalogs (members of archives, URLs).
VSI_PREFIXES = ("/vsizip/", "/vsitar/", "/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/")


def is_vsi(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a GDAL virtual path (``/vsizip/...``, ``/vsicurl/...``) or a URL."""
    text = os.fspath(path)
    return text.startswith(VSI_PREFIXES) or "://" in text


def archive_member(archive: str | os.PathLike[str], inner: str) -> str:
    """The GDAL path of a file inside a .zip: ``/vsizip/{/abs/a.zip}/inner/x.jp2``.

    The braces keep the archive's path whole: ``pathlib`` and ``os.path`` leave the path as it is
    (``/vsizip//abs/a.zip``, the other absolute form, loses its double slash to them and then reads
    as relative to the working folder).
    """
    return "/vsizip/{" + os.path.abspath(archive) + "}/" + inner.lstrip("/")


def vsi_container(path: str | os.PathLike[str]) -> str | None:
    """The local file a GDAL archive path reads from: ``/vsizip/{/A/B.zip}/x/y.jp2`` (or
    ``/vsizip//A/B.zip/x/y.jp2``) -> ``/A/B.zip``.

    None for a URL (``/vsicurl/``, cloud buckets: nothing local to look at) and for a plain path.
    """
    text = os.fspath(path)
    for prefix, suffixes in (("/vsizip/", (".zip",)), ("/vsitar/", (".tar", ".tar.gz", ".tgz"))):
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            if rest.startswith("{") and "}" in rest:
                return rest[1 : rest.index("}")]
            low = rest.lower()
            for suffix in suffixes:
                cut = low.find(suffix + "/")
                if cut >= 0:
                    return rest[: cut + len(suffix)]
            return rest
    return None


def canonical_vsi(path: str) -> str:
    """An archive member in the :func:`archive_member` form (other GDAL paths unchanged)."""
    parts = _split_archive(path) if path.startswith("/vsizip/") else None
    return path if parts is None else archive_member(parts[1], parts[2])


def path_exists(path: str | os.PathLike[str]) -> bool:
    """Whether a scene file is still there: the file itself, the archive holding it, or (a URL)
    always True (checked by GDAL when read)."""
    text = os.fspath(path)
    if not is_vsi(text):
        return os.path.exists(text)
    container = vsi_container(text)
    return True if container is None else os.path.exists(container)


def path_stat(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size, mtime_ns) of a scene file for change detection: the archive's for an archive member,
    (0, 0) for a URL.

    Raises:
        OSError: the file (or archive) is not there.
    """
    text = os.fspath(path)
    if is_vsi(text):
        container = vsi_container(text)
        if container is None:
            return (0, 0)
        text = container
    st = os.stat(text)
    return (st.st_size, st.st_mtime_ns)


def _split_archive(path: str) -> tuple[str, str, str] | None:
    """``/vsizip/{/a/b.zip}/x.jp2`` -> ("/vsizip/", "/a/b.zip", "/x.jp2"); None unless an archive member."""
    container = vsi_container(path)
    if container is None:
        return None
    start = path.index(container)
    end = start + len(container)
    if path[start - 1 : start] == "{":
        start, end = start - 1, end + 1
    return path[:start].rstrip("/") + "/", container, path[end:]


def relative_path(path: str, base: str | os.PathLike[str]) -> str:
    """``path`` relative to the folder ``base`` (how catalogs store paths, so that a moved folder
    keeps working); an archive member keeps its prefix with its archive made relative
    (``/vsizip/{../in/a.zip}/x.jp2``), a URL is kept as is."""
    if not is_vsi(path):
        return os.path.relpath(path, base)
    parts = _split_archive(path)
    if parts is None:
        return path
    prefix, container, inner = parts
    return prefix + "{" + os.path.relpath(container, base) + "}" + inner


def absolute_path(stored: str, base: str | os.PathLike[str]) -> str:
    """The inverse of :func:`relative_path`: a stored path made absolute against ``base``."""
    from pathlib import Path

    if not is_vsi(stored):
        return str((Path(base) / stored).resolve())
    parts = _split_archive(stored)
    if parts is None:
        return stored
    prefix, container, inner = parts
    return prefix + "{" + str((Path(base) / container).resolve()) + "}" + inner
