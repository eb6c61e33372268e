"""Tests of workers.relabel: LUT lookups on the dense and the sorted path."""

from __future__ import annotations

import numpy as np
import pytest

from workers import relabel as relabel_module
from workers.relabel import relabel


def _oracle(fragments: np.ndarray, lut_ids: np.ndarray, lut_segments: np.ndarray) -> np.ndarray:
    table = dict(zip(lut_ids.tolist(), lut_segments.tolist()))
    flat = [0 if f == 0 else table.get(f, f) for f in fragments.ravel().tolist()]
    return np.array(flat, np.uint64).reshape(fragments.shape)


@pytest.fixture
def path_used(monkeypatch):
    """Record which of the two implementations ``relabel`` chose."""
    used = []
    dense, sorted_ = relabel_module._relabel_dense, relabel_module._relabel_sorted

    def spy_dense(*args, **kwargs):
        used.append("dense")
        return dense(*args, **kwargs)

    def spy_sorted(*args, **kwargs):
        used.append("sorted")
        return sorted_(*args, **kwargs)

    monkeypatch.setattr(relabel_module, "_relabel_dense", spy_dense)
    monkeypatch.setattr(relabel_module, "_relabel_sorted", spy_sorted)
    return used


def _case(rng, candidates, shape, lut_fraction=0.6):
    fragments = rng.choice(candidates, shape).astype(np.uint64)
    fragments[rng.random(shape) < 0.2] = 0
    in_lut = np.unique(candidates[rng.random(len(candidates)) < lut_fraction]).astype(np.uint64)
    # segments: some other fragment id, as a LUT would give
    lut_segments = rng.choice(candidates, len(in_lut)).astype(np.uint64)
    return fragments, in_lut, lut_segments


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("base", [1, 7 * 10**6, 2**62])
def test_dense_path_matches_oracle(seed, base, path_used):
    rng = np.random.default_rng(seed)
    candidates = np.uint64(base) + rng.choice(5000, 300, replace=False).astype(np.uint64)
    fragments, lut_ids, lut_segments = _case(rng, candidates, (4, 6, 7))
    before = fragments.copy()
    out = relabel(fragments, lut_ids, lut_segments)
    assert path_used == ["dense"]
    assert out.dtype == np.uint64 and out.shape == fragments.shape
    np.testing.assert_array_equal(out, _oracle(fragments, lut_ids, lut_segments))
    np.testing.assert_array_equal(fragments, before)  # input untouched


@pytest.mark.parametrize("seed", range(4))
def test_sorted_path_matches_oracle(seed, path_used):
    rng = np.random.default_rng(seed)
    # ids spread further apart than a dense table may span
    candidates = np.uint64(5) + rng.choice(64, 20, replace=False).astype(np.uint64) * np.uint64(2**27 + 3)
    candidates = np.concatenate([candidates, np.array([2**62 + 11], np.uint64)])
    fragments, lut_ids, lut_segments = _case(rng, candidates, (3, 5, 8))
    fragments.flat[0] = candidates.min()
    fragments.flat[1] = candidates.max()
    out = relabel(fragments, lut_ids, lut_segments)
    assert path_used == ["sorted"]
    assert out.dtype == np.uint64 and out.shape == fragments.shape
    np.testing.assert_array_equal(out, _oracle(fragments, lut_ids, lut_segments))


@pytest.mark.parametrize("spread", [10, 2**27])
def test_ids_missing_from_lut_keep_their_id_and_zero_stays_zero(spread, path_used):
    fragments = np.array([[0, 100, 100 + spread], [100 + 2 * spread, 0, 100]], np.uint64)
    lut_ids = np.array([100 + spread], np.uint64)
    lut_segments = np.array([100], np.uint64)
    out = relabel(fragments, lut_ids, lut_segments)
    assert out.tolist() == [[0, 100, 100], [100 + 2 * spread, 0, 100]]
    assert path_used == (["dense"] if spread == 10 else ["sorted"])


@pytest.mark.parametrize("spread", [10, 2**27])
def test_empty_lut_is_identity(spread):
    fragments = np.array([0, 3, 3 + spread, 0], np.uint64)
    out = relabel(fragments, np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    np.testing.assert_array_equal(out, fragments)


def test_lut_entries_outside_the_block_do_not_matter():
    fragments = np.array([50, 51, 52], np.uint64)
    lut_ids = np.array([1, 2, 50, 52, 99, 2**40], np.uint64)
    lut_segments = np.array([7, 7, 1, 2, 7, 7], np.uint64)
    assert relabel(fragments, lut_ids, lut_segments).tolist() == [1, 51, 2]


@pytest.mark.parametrize("shape", [(0,), (0, 4), (2, 0, 3)])
def test_empty_arrays(shape):
    fragments = np.zeros(shape, np.uint64)
    out = relabel(fragments, np.array([1], np.uint64), np.array([2], np.uint64))
    assert out.shape == shape
    assert out.dtype == np.uint64


def test_all_background():
    fragments = np.zeros((2, 3), np.uint64)
    out = relabel(fragments, np.array([1], np.uint64), np.array([2], np.uint64))
    assert out.tolist() == [[0, 0, 0], [0, 0, 0]]
    out[0, 0] = 5
    assert fragments[0, 0] == 0  # a copy, not a view of the input
