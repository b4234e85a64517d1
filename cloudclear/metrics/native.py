"""SSIM's compiled tile kernel (``_ssim.c``), loaded through ctypes when it was built.

``pip install`` compiles ``cloudclear/metrics/_ssim.c`` where a C compiler is present (the
extension is optional: without a compiler the install goes on). :func:`ssim_tile` then computes a
tile's SSIM sums in float64, in one pass per band, faster than the numpy / torch tiles of
:mod:`cloudclear.metrics.maths` (float32, centred per tile), which remain the path where the
library is missing.

Set ``CLOUDCLEAR_NATIVE=0`` to use the numpy / torch tiles even where the library is built.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from cloudclear.metrics import scratch

if TYPE_CHECKING:
    from cloudclear.metrics.conventions import SsimWindow
    from cloudclear.metrics.maths import Reflectance

#: numpy dtypes the kernel reads, and its codes for them (``T_*`` in ``_ssim.c``).
TYPES = {
    np.dtype(np.uint8): 0,
    np.dtype(np.uint16): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.uint32): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.float32): 5,
    np.dtype(np.float64): 6,
}

#: The version of ``_ssim.c``'s interface this module calls (``cc_ssim_version``).
VERSION = 2

_P, _I, _S, _D = ctypes.c_void_p, ctypes.c_int, ctypes.c_ssize_t, ctypes.c_double


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernel, or None where it was not built (or ``CLOUDCLEAR_NATIVE=0``)."""
    if os.environ.get("CLOUDCLEAR_NATIVE", "1") == "0":
        return None
    spec = importlib.util.find_spec("cloudclear.metrics._ssim")
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
        version = lib.cc_ssim_version()
    except (OSError, AttributeError):
        version = None
    if version != VERSION:
        # Built from another _ssim.c (an editable install is not rebuilt by a pull): its
        # arguments or its sums may differ, so it is not used.
        warnings.warn(
            f"{spec.origin}: SSIM's compiled kernel is out of date (version {version}, this cloudclear needs "
            f"{VERSION}); scoring through the slower numpy / torch tiles. Reinstall (pip install -e .) to rebuild it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    lib.cc_ssim_scratch.restype = ctypes.c_size_t
    lib.cc_ssim_scratch.argtypes = [_I, _I]
    lib.cc_ssim_tile.restype = _I
    source: list[type] = [_P, _I, _S, _S, _P, _I]
    lib.cc_ssim_tile.argtypes = [*source, *source, _I, _I, _I, _I, _P, _D, _D, _D, _D, _P, _S, _P, _P]
    return lib


def available() -> bool:
    """Whether the compiled kernel is in use."""
    return library() is not None


def readable(a: np.ndarray) -> bool:
    """Whether the kernel reads ``a`` (bands, rows, cols) as it lies: a type it knows, native
    byte order, contiguous columns, strides whole elements."""
    return (
        a.dtype in TYPES
        and a.dtype.isnative
        and a.ndim == 3
        and a.strides[2] == a.itemsize
        and a.strides[0] % a.itemsize == 0
        and a.strides[1] % a.itemsize == 0
    )


def ssim_tile(
    pred: np.ndarray,
    ref: np.ndarray,
    sel: np.ndarray,
    window: SsimWindow,
    peak: float,
    pred_refl: Reflectance,
    ref_refl: Reflectance,
    out: np.ndarray,
) -> None:
    """Add to ``out`` (float64, per band) the SSIM sums over the ``sel`` pixels of a tile.

    ``pred`` and ``ref`` are the tile's raw values with its halo, (bands, h + 2r, w + 2r), read
    as reflectance through ``pred_refl`` and ``ref_refl`` (:func:`readable` of both); ``sel``
    is (h, w) bool, and every selected pixel's window holds valid values.
    """
    lib = library()
    assert lib is not None
    k = len(window.kernel)
    nb, h, w = len(pred), *sel.shape
    if pred.shape[1:] != (h + k - 1, w + k - 1) or ref.shape != pred.shape:
        raise ValueError(f"tile {pred.shape} / {ref.shape} does not hold a {h} x {w} selection and its halo")
    if sel.strides[1] != 1:
        sel = np.ascontiguousarray(sel)
    kern = _kernel(window.kernel)
    ring = scratch.buffer("native", (lib.cc_ssim_scratch(w, k),), np.float64)
    c1, c2 = window.constants(peak)
    so = [_scale_offset(refl, nb) for refl in (pred_refl, ref_refl)]
    args = []
    for a, refl, pairs in ((pred, pred_refl, so[0]), (ref, ref_refl, so[1])):
        n = a.itemsize
        args += [a.ctypes.data, TYPES[a.dtype], a.strides[0] // n, a.strides[1] // n, pairs.ctypes.data, int(refl.clip)]
    done = lib.cc_ssim_tile(
        *args, nb, h, w, k, kern.ctypes.data, peak, c1, c2, window.covariance_norm(),
        sel.ctypes.data, sel.strides[0], ring.ctypes.data, out.ctypes.data,
    )  # fmt: skip
    if done != 0:
        raise ValueError(f"the SSIM kernel refused a tile of {pred.dtype} / {ref.dtype} with a {k}-tap window")


@functools.cache
def _kernel(kernel: tuple[float, ...]) -> np.ndarray:
    """The window's weights as the kernel reads them: float64, as scikit-image convolves."""
    return np.asarray(kernel, np.float64)


def _scale_offset(refl: Reflectance, nb: int) -> np.ndarray:
    """Per band, scale then offset (float64), as the kernel reads them."""
    pairs = np.empty((nb, 2))
    pairs[:, 0] = refl.scale or 1.0
    pairs[:, 1] = refl.offset or 0.0
    return pairs
