"""Fragments to segments through a lookup table, on one block.

Examples
--------
>>> import numpy as np
>>> fragments = np.array([[0, 101, 102], [103, 101, 0]], np.uint64)
>>> lut_ids = np.array([101, 102, 103], np.uint64)
>>> lut_segments = np.array([101, 101, 103], np.uint64)
>>> relabel(fragments, lut_ids, lut_segments).tolist()
[[0, 101, 101], [103, 101, 0]]
"""

from __future__ import annotations

import numpy as np

# Beyond this many ids a dense table per block costs more memory than it saves.
_MAX_DENSE = 1 << 26


def relabel(fragments: np.ndarray, lut_ids: np.ndarray, lut_segments: np.ndarray) -> np.ndarray:
    """Map fragment ids through a LUT; ids not in it keep their id, 0 stays 0.

    Parameters
    ----------
    fragments : ndarray of uint64
        Fragment ids.
    lut_ids : ndarray of uint64
        Fragment ids of the LUT, sorted ascending (only those of this block
        are needed).
    lut_segments : ndarray of uint64
        Segment id of each entry of ``lut_ids``.
    """
    fragments = np.asarray(fragments, dtype=np.uint64)
    if fragments.size == 0:
        return fragments.copy()
    nonzero = fragments[fragments != 0]
    if nonzero.size == 0:
        return fragments.copy()
    low = int(nonzero.min())
    high = int(nonzero.max())
    if high - low < _MAX_DENSE:
        return _relabel_dense(fragments, lut_ids, lut_segments, low, high)
    return _relabel_sorted(fragments, lut_ids, lut_segments)


def _relabel_dense(fragments: np.ndarray, lut_ids: np.ndarray, lut_segments: np.ndarray, low: int, high: int) -> np.ndarray:
    # A block's fragments share one home block, so their ids fill a narrow
    # range: a dense table over that range turns the lookup into one gather.
    table = np.arange(low, high + 1, dtype=np.uint64)
    # np.uint64 bounds: a Python int would be compared as float64 and lose
    # precision for ids above 2**53.
    start = int(np.searchsorted(lut_ids, np.uint64(low), side="left"))
    stop = int(np.searchsorted(lut_ids, np.uint64(high), side="right"))
    ids = lut_ids[start:stop]
    table[(ids - np.uint64(low)).astype(np.int64)] = lut_segments[start:stop]
    # 0 maps to 0 without a branch: clip it to the first slot, then mask.
    index = fragments.astype(np.int64) - low
    np.clip(index, 0, None, out=index)
    out = table[index]
    out[fragments == 0] = 0
    return out


def _relabel_sorted(fragments: np.ndarray, lut_ids: np.ndarray, lut_segments: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(fragments, return_inverse=True)
    position = np.searchsorted(lut_ids, unique)
    position = np.clip(position, 0, max(len(lut_ids) - 1, 0))
    found = (lut_ids[position] == unique) if len(lut_ids) else np.zeros(len(unique), bool)
    mapped = np.where(found, lut_segments[position] if len(lut_ids) else unique, unique)
    mapped[unique == 0] = 0
    return mapped[inverse].reshape(fragments.shape).astype(np.uint64)
