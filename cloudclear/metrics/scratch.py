"""Per-thread scratch buffers of the scorer: reused from block to block and tile to tile, where
fresh arrays would each have their pages zeroed by the kernel."""

from __future__ import annotations

import math
import threading

import numpy as np

_local = threading.local()


def buffer(name: str, shape: tuple[int, ...], dtype: np.typing.DTypeLike) -> np.ndarray:
    """This thread's buffer ``name`` of ``dtype``, as an array of ``shape`` (grown by a quarter
    more than asked when too small, so that slowly growing shapes do not reallocate each time).

    The contents are whatever the thread last left there: callers write before they read.
    """
    held: dict[tuple[str, np.dtype], np.ndarray] = _local.__dict__.setdefault("held", {})
    key, size = (name, np.dtype(dtype)), math.prod(shape)
    buf = held.get(key)
    if buf is None or buf.size < size:
        buf = held[key] = np.empty(size + size // 4, dtype)
    return buf[:size].reshape(shape)
