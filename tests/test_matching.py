"""Instance matching (blockseg.evaluate): StarDist's matching as oracle, hand cases, tables, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from blockseg.evaluate import (
    foreground_iou,
    foreground_iou_from_overlaps,
    matching,
    matching_dataset,
    matching_from_overlaps,
    overlap_table,
)
from workers.evaluate import contingency_table, merge_contingency, relabel_contingency

from helpers import read_dataset, voronoi_cells, write_config

stardist_matching = pytest.importorskip("stardist.matching")

INTS = ("tp", "fp", "fn", "n_true", "n_pred")
FLOATS = ("precision", "recall", "accuracy", "f1", "mean_true_score", "mean_matched_score", "panoptic_quality")
# Thresholds whose float32 rounding is >= the float64 value: the oracle rounds IoUs to
# float32, and e.g. an IoU of exactly 0.9 fails 0.9 there (float32(0.9) < 0.9), not here.
THRESHOLDS = [0.0, 0.1, 0.3, 0.5, 0.6, 0.75]


def _exact_iou(truth: np.ndarray, prediction: np.ndarray, t: int, p: int) -> float:
    a, b = truth == t, prediction == p
    return float(np.count_nonzero(a & b)) / float(np.count_nonzero(a | b))


def _check_against_oracle(truth, prediction, thresholds, criterion="iou"):
    ours = matching(truth, prediction, thresholds, criterion)
    oracle = stardist_matching.matching(truth, prediction, thresholds, criterion, report_matches=True)
    for mine, theirs in zip(ours, oracle):
        assert mine.thresh == theirs.thresh and mine.criterion == criterion
        for key in INTS:
            assert getattr(mine, key) == int(getattr(theirs, key)), (key, mine, theirs)
        for key in FLOATS:
            # the oracle's IoUs are float32
            assert getattr(mine, key) == pytest.approx(float(getattr(theirs, key)), rel=1e-6, abs=1e-7), key
        if criterion != "iou":
            continue
        # The oracle's own pairs rescored in float64 give our float statistics to 1e-9.
        pairs = [theirs.matched_pairs[k] for k in theirs.matched_tps]
        score_sum = sum(_exact_iou(truth, prediction, t, p) for t, p in pairs)
        tp, fp, fn = mine.tp, mine.fp, mine.fn
        assert mine.sum_matched_score == pytest.approx(score_sum, rel=1e-12, abs=1e-12)
        if tp:
            assert mine.mean_matched_score == pytest.approx(score_sum / tp, abs=1e-9)
            assert mine.panoptic_quality == pytest.approx(score_sum / (tp + fp / 2 + fn / 2), abs=1e-9)
            assert mine.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
        if mine.n_true:
            assert mine.mean_true_score == pytest.approx(score_sum / mine.n_true, abs=1e-9)


def _perturbed(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction: cells split in two, neighbours merged, shifted, some dropped, some added."""
    prediction = truth * 2 + (rng.random(truth.shape) < 0.5) * (truth > 0)  # split: ids 2t, 2t + 1 (noisy)
    prediction = ndi.median_filter(prediction, size=3)  # turns the salt and pepper into blobs
    ids = np.unique(prediction[prediction > 0])
    remap = np.arange(prediction.max() + 1)
    merged = rng.choice(ids, size=len(ids) // 4, replace=False)
    remap[merged] = remap[np.roll(merged, 1)]  # merges
    remap[rng.choice(ids, size=len(ids) // 10, replace=False)] = 0  # misses
    prediction = remap[prediction]
    prediction = np.roll(prediction, 1, axis=-1)
    extra = voronoi_cells(truth.shape, 5, 2.0, int(rng.integers(1 << 30)))
    return np.where((prediction == 0) & (extra > 0), extra + prediction.max(), prediction)


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_label_pairs_equal_stardist(ndim):
    rng = np.random.default_rng(ndim)
    shape = (96, 96) if ndim == 2 else (20, 40, 40)
    for trial in range(8):
        truth = voronoi_cells(shape, 60, 7.0, seed=100 * ndim + trial)
        if trial % 2:
            prediction = _perturbed(truth, rng)
        else:  # unrelated cells: many IoUs below 0.5 and ties in the assignment
            prediction = voronoi_cells(shape, 60, 7.0, seed=1000 + 100 * ndim + trial)
        _check_against_oracle(truth, prediction, THRESHOLDS)


def test_sparse_solver_for_large_components_equals_stardist(monkeypatch):
    """Big components go to SciPy's sparse matching; force every component there."""
    import blockseg.evaluate as evaluate

    monkeypatch.setattr(evaluate, "_DENSE_CELLS", 0)
    rng = np.random.default_rng(11)
    for trial in range(3):
        truth = voronoi_cells((64, 64), 50, 7.0, seed=50 + trial)
        _check_against_oracle(truth, _perturbed(truth, rng), THRESHOLDS)
        _check_against_oracle(truth, voronoi_cells((64, 64), 50, 7.0, seed=60 + trial), THRESHOLDS)


@pytest.mark.parametrize("criterion", ["iot", "iop"])
def test_other_criteria_equal_stardist(criterion):
    rng = np.random.default_rng(7)
    for trial in range(4):
        truth = voronoi_cells((64, 64), 40, 6.0, seed=trial)
        _check_against_oracle(truth, _perturbed(truth, rng), THRESHOLDS, criterion)


@pytest.mark.parametrize("by_image", [False, True])
def test_dataset_aggregation_equals_stardist(by_image):
    rng = np.random.default_rng(3)
    truths = [voronoi_cells(shape, 30, 6.0, seed=s) for s, shape in enumerate([(50, 60), (40, 40), (64, 48)])]
    predictions = [_perturbed(t, rng) for t in truths]
    truths.append(np.zeros((10, 10), np.int32))  # an image with nothing in it counts too
    predictions.append(np.zeros((10, 10), np.int32))
    ours = matching_dataset(truths, predictions, THRESHOLDS, by_image=by_image)
    oracle = stardist_matching.matching_dataset(truths, predictions, THRESHOLDS, by_image=by_image, show_progress=False)
    for mine, theirs in zip(ours, oracle):
        for key in INTS:
            assert getattr(mine, key) == int(getattr(theirs, key)), key
        for key in FLOATS:
            assert getattr(mine, key) == pytest.approx(float(getattr(theirs, key)), rel=1e-6, abs=1e-7), key
    # pooled, not averaged: the ratios come from the summed counts
    pooled = ours[3]
    if not by_image:
        assert pooled.f1 == pytest.approx(2 * pooled.tp / (2 * pooled.tp + pooled.fp + pooled.fn), abs=1e-12)


def assert_stats(stats, **expected):
    for key, value in expected.items():
        assert getattr(stats, key) == pytest.approx(value, abs=1e-12), key


def test_hand_computed_shifted_square():
    truth = np.zeros((100, 100), np.uint16)
    truth[10:20, 10:20] = 1
    prediction = np.roll(truth, 5, axis=0) * 9  # IoU 50 / 150
    at_half, at_third = matching(truth, prediction, [0.5, 1 / 3])
    assert_stats(at_half, tp=0, fp=1, fn=1, precision=0, f1=0, mean_matched_score=0, panoptic_quality=0)
    assert_stats(at_third, tp=1, fp=0, fn=0, precision=1, recall=1, accuracy=1, f1=1,
          mean_matched_score=1 / 3, mean_true_score=1 / 3, panoptic_quality=1 / 3)


def test_hand_computed_split_in_halves():
    """One 8-voxel object split into two 4-voxel halves: each half has IoU exactly 0.5."""
    truth = np.array([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    prediction = np.array([[0, 4, 4, 4, 4, 6, 6, 6, 6, 0]])
    half, above = matching(truth, prediction, [0.5, 0.51])
    assert_stats(half, tp=1, fp=1, fn=0, n_true=1, n_pred=2, precision=0.5, recall=1, accuracy=0.5, f1=2 / 3,
          mean_matched_score=0.5, mean_true_score=0.5, panoptic_quality=0.5 / 1.5)
    assert_stats(above, tp=0, fp=2, fn=1)


def _assignment_case() -> tuple[np.ndarray, np.ndarray]:
    """A (0..9), B (10..19); P takes 6 of A and 5 of B, R 4 of A plus 3 background voxels, Q 2 of B.

    IoUs: A-P 6/15, B-P 5/16, A-R 4/13, B-Q 2/10.
    """
    truth = np.zeros(24, np.int64)
    truth[0:10], truth[10:20] = 1, 2
    prediction = np.zeros(24, np.int64)
    prediction[4:15] = 7  # P
    prediction[[0, 1, 2, 3, 20, 21, 22]] = 8  # R
    prediction[15:17] = 9  # Q
    return truth[None], prediction[None]


def test_assignment_maximises_matches_not_greedy_iou():
    truth, prediction = _assignment_case()
    # at 0.3 greedy best-IoU-first would take A-P and stop at 1 TP; optimal is B-P + A-R
    (stats,) = matching(truth, prediction, 0.3)
    assert_stats(stats, tp=2, fp=1, fn=0, sum_matched_score=5 / 16 + 4 / 13)


def test_assignment_ties_broken_by_all_assigned_ious():
    """At 0.31 only A-P and B-P pass: one TP either way.  The reference's cost adds every
    assigned IoU, so B-P (5/16) + A-R (4/13, below threshold) beats A-P (6/15) + B-Q (2/10)."""
    truth, prediction = _assignment_case()
    (stats,) = matching(truth, prediction, 0.31)
    assert_stats(stats, tp=1, fp=2, fn=1, sum_matched_score=5 / 16, mean_matched_score=5 / 16)
    _check_against_oracle(truth, prediction, [0.3, 0.31, 0.5])


def test_threshold_zero_counts_every_assigned_pair_like_the_reference():
    truth = np.array([[1, 1, 0, 0, 0]])
    prediction = np.array([[0, 0, 0, 5, 5]])  # no overlap at all
    zero, half = matching(truth, prediction, [0.0, 0.5])
    assert_stats(zero, tp=1, fp=0, fn=0, sum_matched_score=0.0, panoptic_quality=0.0)
    assert_stats(half, tp=0, fp=1, fn=1)
    _check_against_oracle(truth, prediction, [0.0, 0.5])


def test_empty_and_perfect():
    empty = np.zeros((4, 4), np.uint8)
    (stats,) = matching(empty, empty, 0.5)
    assert_stats(stats, tp=0, fp=0, fn=0, n_true=0, n_pred=0, f1=0, panoptic_quality=0)
    labels = np.arange(16).reshape(4, 4) % 5
    (stats,) = matching(labels, labels * 3, 1.0)  # relabelled copy: IoU 1 everywhere
    assert_stats(stats, tp=4, fp=0, fn=0, f1=1, panoptic_quality=1, mean_true_score=1)
    assert foreground_iou(empty, empty) == 1.0


def test_foreground_iou_hand_computed():
    truth = np.array([[1, 1, 2, 0, 0, 0]])
    prediction = np.array([[0, 3, 3, 3, 4, 0]])
    assert foreground_iou(truth, prediction) == pytest.approx(2 / 5)  # both: 2 voxels; union: 5
    assert foreground_iou_from_overlaps(*overlap_table(truth, prediction)) == pytest.approx(2 / 5)


def test_blockwise_tables_through_a_lut_equal_the_whole_image():
    """The pipeline's path: per-block tables of annotated voxels, merged, relabelled by a LUT,
    predicted sizes from the fragments; equal to matching the relabelled volume itself."""
    rng = np.random.default_rng(5)
    truth = voronoi_cells((24, 48, 48), 50, 6.0, seed=11)
    fragments = voronoi_cells((24, 48, 48), 400, 4.0, seed=12).astype(np.uint64) * 1000  # sparse ids
    fragment_ids = np.unique(fragments[fragments > 0])
    segment_ids = rng.integers(1, 150, len(fragment_ids)).astype(np.uint64)  # the LUT: many-to-one
    lut = np.zeros(int(fragments.max()) + 1, np.uint64)
    lut[fragment_ids] = segment_ids
    segmentation = lut[fragments]

    blocks = [(slice(z, z + 12), slice(y, y + 16), slice(0, 48)) for z in (0, 12) for y in (0, 16, 32)]
    table = merge_contingency(contingency_table(fragments[b], truth[b]) for b in blocks)
    table = relabel_contingency(table, fragment_ids, segment_ids)
    ids, sizes = np.unique(fragments[fragments > 0], return_counts=True)
    zeros = np.zeros(len(ids), np.uint64)
    seg_ids, _, seg_sizes = relabel_contingency((ids, zeros, sizes), fragment_ids, segment_ids)

    ours = matching_from_overlaps(table[1], table[0], table[2], THRESHOLDS, pred_sizes=(seg_ids, seg_sizes))
    whole = matching(truth, segmentation, THRESHOLDS)
    for mine, theirs in zip(ours, whole):
        assert mine.to_dict() == pytest.approx(theirs.to_dict(), abs=1e-12)
    fg = foreground_iou_from_overlaps(table[1], table[0], table[2], pred_foreground=int(seg_sizes.sum()))
    assert fg == pytest.approx(foreground_iou(truth, segmentation), abs=1e-12)


def test_bad_input_is_a_clear_error():
    a, b = np.ones((4, 4), int), np.ones((4, 5), int)
    with pytest.raises(ValueError, match="different shapes"):
        matching(a, b)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
            matching(a, a, [0.5, bad])
    with pytest.raises(ValueError, match="none given"):
        matching(a, a, [])
    with pytest.raises(ValueError, match="criterion 'dice' is unknown"):
        matching(a, a, criterion="dice")
    with pytest.raises(ValueError, match="must be integers"):
        matching(a.astype(float), a)
    with pytest.raises(ValueError, match="non-negative"):
        matching(-a, a)
    with pytest.raises(ValueError, match="one prediction per image"):
        matching_dataset([a, a], [a])
    with pytest.raises(ValueError, match="have no size"):
        matching_from_overlaps([1], [2], [5], pred_sizes=(np.array([3]), np.array([5])))
    with pytest.raises(ValueError, match="at least the object's overlaps"):
        matching_from_overlaps([1], [2], [5], pred_sizes=(np.array([2]), np.array([4])))


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_cli_evaluate_matching_equals_matching_on_the_volume(tmp_path, small_inputs):
    config = write_config(tmp_path, small_inputs, stages__segments__thresholds=[0.3, 0.5])
    run = _cli("run", str(config), "--workers", "2", "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    bad = _cli("evaluate", str(config), "--matching", "0.5", "2", cwd=tmp_path)
    assert bad.returncode == 2 and "--matching" in bad.stderr and "[0, 1]" in bad.stderr

    result = _cli("evaluate", str(config), "--matching", "0.5", "0.75", "--workers", "1", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["threshold"][1:6] == ["fg_iou", "P@0.5", "R@0.5", "F1@0.5", "PQ@0.5"]
    assert {"fragments", "0.3", "0.5"} <= set(rows)
    path = tmp_path / "out" / "matching.json"
    assert f"matching: {path}" in result.stdout
    table = json.loads(path.read_text())
    assert table["iou_thresholds"] == [0.5, 0.75]

    from blockseg.volume import open_volume

    segmentation_url = str(tmp_path / "out" / "volumes.zarr" / "segmentation" / "threshold_0.5")
    segmentation = read_dataset(segmentation_url)
    truth = open_volume(f"{small_inputs}/labels").read(open_volume(segmentation_url).roi)
    fragments = read_dataset(str(tmp_path / "out" / "volumes.zarr" / "fragments"))
    for name, volume in (("0.5", segmentation), ("fragments", fragments)):
        entry = table["segmentations"][name]
        for stats in matching(truth, volume, [0.5, 0.75]):
            assert entry["matching"][repr(stats.thresh)] == pytest.approx(stats.to_dict(), abs=1e-9)
        assert entry["foreground_iou"] == pytest.approx(foreground_iou(truth, volume), abs=1e-12)
    printed = rows["0.5"]
    f1 = table["segmentations"]["0.5"]["matching"]["0.5"]["f1"]
    assert float(printed[4]) == pytest.approx(f1, abs=1e-4)

    elsewhere = tmp_path / "elsewhere" / "m.json"
    again = _cli("evaluate", str(config), "--matching", "0.6", "--matching-json", str(elsewhere), "--no-progress",
                 cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert list(json.loads(elsewhere.read_text())["segmentations"]["0.3"]["matching"]) == ["0.6"]
