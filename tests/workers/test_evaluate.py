"""Tests for workers.evaluate: contingency tables and VOI / adapted Rand scores."""

from __future__ import annotations

import itertools

import fastremap
import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from workers.evaluate import (
    contingency_table,
    evaluate_arrays,
    merge_contingency,
    relabel_contingency,
    scores_from_contingency,
)

SCORE_KEYS = {
    "voi_split",
    "voi_merge",
    "voi_sum",
    "rand_split",
    "rand_merge",
    "adapted_rand_error",
    "n_voxels",
}


def _random_volumes(
    seed: int, shape: tuple[int, ...] = (12, 14, 16)
) -> tuple[np.ndarray, np.ndarray]:
    """Small random (segmentation, ground truth) pair with gt background.

    Few labels per volume so that segments and objects overlap a lot; seg
    contains label 0 as an ordinary label and gt has about 20 % zeros.
    """
    rng = np.random.default_rng(seed)
    gt = rng.integers(1, 6, size=shape, dtype=np.uint64)
    gt[rng.random(shape) < 0.2] = 0
    seg = rng.integers(0, 8, size=shape, dtype=np.uint64)
    return seg, gt


def _brute_force_table(
    seg: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference contingency table via np.unique over (seg, gt) rows."""
    mask = gt != 0
    pairs = np.stack(
        [seg[mask].astype(np.uint64), gt[mask].astype(np.uint64)], axis=1
    )
    # np.unique(axis=0) sorts rows lexicographically, as the API promises.
    unique_pairs, counts = np.unique(pairs, axis=0, return_counts=True)
    return unique_pairs[:, 0], unique_pairs[:, 1], counts


def _assert_tables_equal(actual, expected) -> None:
    """Same rows in the same order with the documented dtypes."""
    seg_ids, gt_ids, counts = actual
    assert seg_ids.dtype == np.uint64
    assert gt_ids.dtype == np.uint64
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(seg_ids, expected[0])
    np.testing.assert_array_equal(gt_ids, expected[1])
    np.testing.assert_array_equal(counts, expected[2])


def _entropy_bits(sizes: np.ndarray) -> float:
    """Shannon entropy in bits of a partition with the given object sizes."""
    p = np.asarray(sizes, dtype=np.float64) / np.sum(sizes)
    return float(-np.sum(p * np.log2(p)))


# ---------------------------------------------------------------- contingency


def test_contingency_table_small_exact():
    seg = np.array([[0, 0, 5], [5, 9, 9]], dtype=np.uint32)
    gt = np.array([[1, 0, 2], [2, 2, 1]], dtype=np.int16)
    expected = (
        np.array([0, 5, 9, 9], dtype=np.uint64),
        np.array([1, 2, 1, 2], dtype=np.uint64),
        np.array([1, 2, 1, 1], dtype=np.int64),
    )
    _assert_tables_equal(contingency_table(seg, gt), expected)


@pytest.mark.parametrize(
    "seg_dtype, gt_dtype",
    [(np.uint64, np.uint64), (np.int32, np.uint8), (np.uint16, np.int64)],
)
def test_contingency_table_matches_brute_force(seg_dtype, gt_dtype):
    seg, gt = _random_volumes(seed=3)
    seg, gt = seg.astype(seg_dtype), gt.astype(gt_dtype)
    _assert_tables_equal(contingency_table(seg, gt), _brute_force_table(seg, gt))


def test_contingency_table_huge_uint64_ids():
    rng = np.random.default_rng(11)
    # Ids above 2**63 must survive without going through a signed type.
    seg_choices = np.array([0, 2**64 - 1, 2**63 + 5, 7, 2**40], dtype=np.uint64)
    gt_choices = np.array([0, 2**64 - 2, 3, 2**63], dtype=np.uint64)
    seg = seg_choices[rng.integers(0, seg_choices.size, size=(9, 10, 11))]
    gt = gt_choices[rng.integers(0, gt_choices.size, size=(9, 10, 11))]
    _assert_tables_equal(contingency_table(seg, gt), _brute_force_table(seg, gt))


def test_contingency_table_ignores_only_gt_zero():
    seg = np.array([0, 0, 1, 1], dtype=np.uint64)
    gt = np.array([0, 4, 0, 4], dtype=np.uint64)
    seg_ids, gt_ids, counts = contingency_table(seg, gt)
    np.testing.assert_array_equal(seg_ids, [0, 1])
    np.testing.assert_array_equal(gt_ids, [4, 4])
    np.testing.assert_array_equal(counts, [1, 1])


def test_contingency_table_all_background_is_empty():
    seg = np.arange(8, dtype=np.uint64).reshape(2, 2, 2)
    gt = np.zeros_like(seg)
    _assert_tables_equal(contingency_table(seg, gt), ([], [], []))


def test_contingency_table_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        contingency_table(np.zeros((2, 3)), np.zeros((3, 2)))


# ---------------------------------------------------------------------- merge


def test_merge_contingency_sums_duplicates_and_sorts():
    first = (
        np.array([3, 1], dtype=np.uint64),
        np.array([1, 2], dtype=np.uint64),
        np.array([5, 1], dtype=np.int64),
    )
    second = (
        np.array([1, 1, 3], dtype=np.uint64),
        np.array([2, 1, 1], dtype=np.uint64),
        np.array([4, 2, 1], dtype=np.int64),
    )
    expected = ([1, 1, 3], [1, 2, 1], [2, 5, 6])
    _assert_tables_equal(merge_contingency([first, second]), expected)
    # Accepts any iterable, e.g. a generator coming out of a task graph.
    _assert_tables_equal(merge_contingency(t for t in (second, first)), expected)


def test_merge_contingency_empty_input():
    _assert_tables_equal(merge_contingency([]), ([], [], []))
    empty = contingency_table(np.zeros(3), np.zeros(3))
    _assert_tables_equal(merge_contingency([empty, empty]), ([], [], []))


def _blockwise_table(seg: np.ndarray, gt: np.ndarray, chunk: tuple[int, ...]):
    """Contingency table of a volume accumulated block by block."""
    starts = [range(0, size, step) for size, step in zip(seg.shape, chunk)]
    tables = []
    for corner in itertools.product(*starts):
        block = tuple(slice(c, c + s) for c, s in zip(corner, chunk))
        tables.append(contingency_table(seg[block], gt[block]))
    return merge_contingency(tables)


def test_blockwise_accumulation_equals_whole_volume():
    seg, gt = _random_volumes(seed=5, shape=(20, 24, 28))
    # Chunk sizes that do not divide the shape leave ragged edge blocks.
    merged = _blockwise_table(seg, gt, chunk=(7, 8, 9))
    whole = contingency_table(seg, gt)
    _assert_tables_equal(merged, whole)
    merged_scores = scores_from_contingency(merged)
    whole_scores = scores_from_contingency(whole)
    for key in SCORE_KEYS:
        np.testing.assert_allclose(
            merged_scores[key], whole_scores[key], rtol=1e-12, atol=1e-12
        )


# -------------------------------------------------------------------- relabel


def test_relabel_contingency_matches_relabelled_volume():
    rng = np.random.default_rng(7)
    fragments = rng.integers(0, 30, size=(10, 12, 14), dtype=np.uint64)
    gt = rng.integers(0, 6, size=fragments.shape, dtype=np.uint64)
    # Merge fragments into a few segments; 0 is in the LUT but must stay 0,
    # and fragments 25..29 are absent from the LUT so they keep their ids.
    fragment_ids = np.arange(0, 25, dtype=np.uint64)
    segment_ids = (1000 + fragment_ids // 4).astype(np.uint64)
    lut = {int(f): int(s) for f, s in zip(fragment_ids, segment_ids) if f != 0}
    segments = fastremap.remap(fragments, lut, preserve_missing_labels=True)

    relabelled = relabel_contingency(
        contingency_table(fragments, gt), fragment_ids, segment_ids
    )
    _assert_tables_equal(relabelled, contingency_table(segments, gt))
    assert 0 in relabelled[0]
    assert 29 in relabelled[0]


def test_relabel_contingency_empty_lut_is_identity():
    table = contingency_table(*_random_volumes(seed=8))
    empty = np.zeros(0, dtype=np.uint64)
    _assert_tables_equal(relabel_contingency(table, empty, empty), table)


def test_relabel_contingency_rejects_bad_lut():
    table = contingency_table(*_random_volumes(seed=9))
    unsorted = np.array([3, 1], dtype=np.uint64)
    sorted_keys = np.array([1, 3], dtype=np.uint64)
    with pytest.raises(ValueError, match="sorted"):
        relabel_contingency(table, unsorted, np.ones(2, dtype=np.uint64))
    with pytest.raises(ValueError, match="length"):
        relabel_contingency(table, sorted_keys, np.ones(1, dtype=np.uint64))


# --------------------------------------------------------------------- scores


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_scores_match_skimage(seed):
    seg, gt = _random_volumes(seed=seed)
    scores = evaluate_arrays(seg, gt)
    # skimage returns [H(image1 | image0), H(image0 | image1)]; with
    # image0 = gt that is [H(seg | gt), H(gt | seg)] = [split, merge].
    split, merge = variation_of_information(gt, seg, ignore_labels=[0])
    are, sk_precision, sk_recall = adapted_rand_error(gt, seg, ignore_labels=[0])
    assert scores["voi_split"] == pytest.approx(split, abs=1e-9)
    assert scores["voi_merge"] == pytest.approx(merge, abs=1e-9)
    assert scores["voi_sum"] == pytest.approx(split + merge, abs=1e-9)
    assert scores["adapted_rand_error"] == pytest.approx(are, abs=1e-9)
    # skimage's "precision" divides by ground-truth pairs, i.e. it is what
    # measures splits; see the scores_from_contingency notes.
    assert scores["rand_split"] == pytest.approx(1 - sk_precision, abs=1e-9)
    assert scores["rand_merge"] == pytest.approx(1 - sk_recall, abs=1e-9)
    assert scores["n_voxels"] == np.count_nonzero(gt)
    assert set(scores) == SCORE_KEYS


def test_over_split_has_split_error_only():
    gt = np.repeat(np.array([1, 2], dtype=np.uint64), 8).reshape(2, 2, 4)
    # Every gt object cut into two equal halves: exactly one bit of split.
    seg = np.repeat(np.array([10, 11, 20, 21], dtype=np.uint64), 4).reshape(2, 2, 4)
    scores = evaluate_arrays(seg, gt)
    assert scores["voi_split"] == pytest.approx(1.0)
    assert scores["voi_merge"] == 0.0
    assert scores["rand_split"] > 0.5
    assert scores["rand_merge"] == 0.0
    # The skimage ordering agrees on which entropy is the split.
    split, merge = variation_of_information(gt, seg, ignore_labels=[0])
    assert (split, merge) == pytest.approx((1.0, 0.0))
    # ...and the swapped precision/recall naming noted in the docstring.
    _, sk_precision, sk_recall = adapted_rand_error(gt, seg, ignore_labels=[0])
    assert sk_recall == pytest.approx(1.0)
    assert sk_precision < 0.5


def test_hand_computed_tiny_case():
    # Fifth voxel is unannotated and must not count.
    gt = np.array([1, 1, 2, 2, 0], dtype=np.uint8)
    seg = np.array([1, 1, 1, 2, 7], dtype=np.uint8)
    # Pairs (seg, gt): (1,1)=2, (1,2)=1, (2,2)=1; N=4.
    # gt sizes {1: 2, 2: 2}, seg sizes {1: 3, 2: 1}.
    # H(S|G) = -(1/2 log2(2/2) + 1/4 log2(1/2) + 1/4 log2(1/2)) = 1/2
    # H(G|S) = -(1/2 log2(2/3) + 1/4 log2(1/3) + 1/4 log2(1/1))
    #        = 3/4 log2(3) - 1/2
    # Pairs: sum n^2 - N = 2, sum a^2 - N = 4, sum b^2 - N = 6,
    # recall 2/4, precision 2/6, ARE = 1 - 2 * 2 / (4 + 6).
    scores = evaluate_arrays(seg, gt)
    expected_merge = 0.75 * np.log2(3) - 0.5
    assert scores["voi_split"] == pytest.approx(0.5, abs=1e-15)
    assert scores["voi_merge"] == pytest.approx(expected_merge, abs=1e-15)
    assert scores["voi_sum"] == pytest.approx(0.5 + expected_merge, abs=1e-15)
    assert scores["rand_split"] == pytest.approx(0.5, abs=1e-15)
    assert scores["rand_merge"] == pytest.approx(2 / 3, abs=1e-15)
    assert scores["adapted_rand_error"] == pytest.approx(0.6, abs=1e-15)
    assert scores["n_voxels"] == 4.0


def test_perfect_segmentation_scores_zero():
    _, gt = _random_volumes(seed=4)
    # A renaming of the gt labels, with arbitrary labels in the background.
    seg = gt * np.uint64(2**40) + np.uint64(17)
    seg[gt == 0] = 3
    scores = evaluate_arrays(seg, gt)
    for key in SCORE_KEYS - {"n_voxels"}:
        assert scores[key] == 0.0, key


def test_all_merged_segmentation():
    _, gt = _random_volumes(seed=6)
    seg = np.zeros_like(gt)
    scores = evaluate_arrays(seg, gt)
    _, gt_sizes = np.unique(gt[gt != 0], return_counts=True)
    assert scores["voi_split"] == 0.0
    assert scores["voi_merge"] == pytest.approx(_entropy_bits(gt_sizes), abs=1e-12)
    assert scores["rand_split"] == 0.0
    assert scores["rand_merge"] > 0.5


def test_scores_accept_unsorted_duplicate_rows():
    seg, gt = _random_volumes(seed=10)
    table = contingency_table(seg, gt)
    rng = np.random.default_rng(0)
    order = rng.permutation(table[2].size)
    # Split every count into two rows and shuffle them.
    half = table[2] // 2
    messy = (
        np.concatenate([table[0][order], table[0]]),
        np.concatenate([table[1][order], table[1]]),
        np.concatenate([half[order], table[2] - half]),
    )
    expected = scores_from_contingency(table)
    actual = scores_from_contingency(messy)
    for key in SCORE_KEYS:
        assert actual[key] == pytest.approx(expected[key], abs=1e-12), key


def test_empty_table_scores_zero():
    scores = scores_from_contingency(merge_contingency([]))
    assert scores == {key: 0.0 for key in SCORE_KEYS}
    assert evaluate_arrays(np.ones((2, 2)), np.zeros((2, 2))) == scores


def test_singleton_objects_do_not_divide_by_zero():
    # Every object is one voxel: no same-label pairs anywhere.
    seg = np.array([1, 2, 3], dtype=np.uint64)
    gt = np.array([4, 5, 6], dtype=np.uint64)
    scores = evaluate_arrays(seg, gt)
    assert all(np.isfinite(value) for value in scores.values())
    assert scores["adapted_rand_error"] == 0.0
