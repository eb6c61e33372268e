"""blockseg.stitch: halo numbering and overlap scores against plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.stitch import halo_labels, overlap_edges


def _halo_reference(labels: np.ndarray, crop: tuple[slice, ...]) -> np.ndarray:
    """Pieces seen in the crop numbered 1..m by sorted old id, the rest 0 (a dict lookup per voxel)."""
    inner = sorted(int(v) for v in np.unique(labels[crop]) if v != 0)
    number = {old: new for new, old in enumerate(inner, start=1)}
    return np.vectorize(lambda v: number.get(int(v), 0), otypes=[np.uint32])(labels)


@pytest.mark.parametrize("dtype", [np.uint64, np.int32, np.uint32])
def test_halo_labels_match_a_dictionary_lookup(dtype):
    rng = np.random.default_rng(5)
    for trial in range(4):
        # ids spread out (large uint64 values too), background 0, pieces only in the context
        ids = rng.choice(np.arange(0, 2**31 - 1, 9973), size=12, replace=False).astype(dtype)
        labels = ids[rng.integers(0, len(ids), (6, 10, 12))]
        if dtype == np.uint64:
            labels[labels != 0] += np.uint64(2**40)
        crop = (slice(1, 5), slice(2, 8), slice(3, 9))
        local, inner = halo_labels(labels, crop)
        expected = _halo_reference(labels, crop)
        assert local.dtype == np.uint32 and np.array_equal(local, expected), trial
        assert np.array_equal(inner, expected[crop])


def test_halo_labels_with_nothing_in_the_write_roi_is_all_zero():
    labels = np.zeros((4, 5), np.uint64)
    labels[0] = 7  # a piece that lies entirely in the context
    local, inner = halo_labels(labels, (slice(2, 4), slice(0, 5)))
    assert not local.any() and inner.shape == (2, 5)


def test_overlap_edges_by_hand():
    a = np.array([1, 1, 1, 1, 2, 2], np.uint64)
    b = np.array([7, 7, 7, 8, 8, 0], np.uint64)
    u, v, iou = overlap_edges(a, b)
    assert u.tolist() == [1, 1, 2] and v.tolist() == [7, 8, 8]
    # 1&7: 3 / 4; 1&8: 1 / (4 + 2 - 1); 2&8: 1 / (2 + 2 - 1)
    assert np.allclose(iou, [3 / 4, 1 / 5, 1 / 3])
