"""Instance matching scores (StarDist / BiaPy convention), from images or overlap tables.

Predicted and true instances are paired one-to-one so that as many pairs as
possible reach the IoU threshold; among those pairings the one with the
largest total IoU wins.  A pair at or above the threshold is a true positive,
unpaired predictions are false positives, unpaired true objects false
negatives.  Label 0 is background on both sides.  The statistics and their
names follow the matching code that StarDist publishes and BiaPy reuses:
``precision``, ``recall``, ``accuracy`` (TP / (TP + FP + FN)), ``f1``,
``mean_matched_score`` (mean IoU of the TPs), ``mean_true_score`` (the same
sum over the number of true objects) and ``panoptic_quality``.

Everything is computed from an *overlap table*: for each pair of labels that
share voxels, (true id, predicted id, voxels), plus each object's total size.
That is what makes volume-scale evaluation possible: the evaluate stage keeps
per-block fragment x ground-truth contingency tables, a segments lookup table
turns them into segment x ground-truth tables, and the RAG nodes carry the
fragment sizes, so the matching of a whole volume needs no pass over it.
:func:`matching` builds the table from two images and calls
:func:`matching_from_overlaps`.

Differences from the reference, on purpose:

* IoUs are exact float64 ratios; the reference rounds them to float32, so its
  float statistics differ from these by up to ~1e-7 relative, and an IoU that
  lies within float32 rounding of a threshold can fall on the other side of
  it there (e.g. an IoU of exactly 0.9 fails threshold 0.9 in the reference
  because ``float32(0.9) < 0.9``).
* Only pairs that overlap enter the assignment, and only the connected parts
  of the overlap graph where the optimum is not forced are solved (see
  :func:`matching_from_overlaps`): 10^5 objects take well under a second at
  IoU >= 0.5, and seconds below it unless everything is one connected mass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csgraph

from blockseg.matching_stats import (  # noqa: F401
    CRITERIA,
    MatchingStats,
    _aggregate,
    _ratio,
    _stats,
    check_thresholds,
    format_matching,
)
from blockseg.overlaps import (  # noqa: F401
    _check_labels,
    _pair_scores,
    _size_lookup,
    _sizes_from,
    foreground_iou,
    foreground_iou_from_overlaps,
    overlap_table,
)

__all__ = [
    "CRITERIA",
    "MatchingStats",
    "check_thresholds",
    "overlap_table",
    "matching_from_overlaps",
    "matching",
    "matching_dataset",
    "foreground_iou",
    "foreground_iou_from_overlaps",
    "matching_of_run",
    "format_matching",
]


def _max_weight_matching(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Indices of the pairs of a maximum-weight bipartite matching (weights > 0).

    Parameters
    ----------
    rows, cols : np.ndarray
        Dense row / column index of each candidate pair (no duplicates).
    weights : np.ndarray
        Positive weight of each pair.

    Notes
    -----
    SciPy's sparse solver wants a *full* matching of minimum cost; every row
    gets a private dummy column of cost ``C`` and a real pair costs
    ``C - weight``, so the cheapest full matching is the heaviest matching and
    a row left unmatched takes its dummy.  Working on the sparse pairs keeps
    big components (e.g. a badly merged volume) out of dense cost matrices.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    row_ids, row_dense = np.unique(rows, return_inverse=True)
    col_ids, col_dense = np.unique(cols, return_inverse=True)
    if len(col_ids) < len(row_ids):
        # the smaller side as rows needs fewer dummies; ~1.6x faster on a 10^5-object lattice
        row_ids, row_dense, col_ids, col_dense = col_ids, col_dense, row_ids, row_dense
    n_rows, n_cols = len(row_ids), len(col_ids)
    ceiling = float(weights.max()) + 1.0
    dummy = np.arange(n_rows)
    biadjacency = sparse.csr_matrix(
        (
            np.concatenate([ceiling - weights, np.full(n_rows, ceiling)]),
            (np.concatenate([row_dense.ravel(), dummy]), np.concatenate([col_dense.ravel(), n_cols + dummy])),
        ),
        shape=(n_rows, n_cols + n_rows),
    )
    matched_row, matched_col = csgraph.min_weight_full_bipartite_matching(biadjacency)
    real = matched_col < n_cols
    # back from (row, column) to the caller's pair index through sorted pair keys
    pair_key = row_dense.ravel().astype(np.int64) * n_cols + col_dense.ravel()
    order = np.argsort(pair_key)
    wanted = matched_row[real].astype(np.int64) * n_cols + matched_col[real]
    return np.sort(order[np.searchsorted(pair_key, wanted, sorter=order)])


# Components up to this many cells (true x predicted objects) go to the dense
# Hungarian solver, the rest to the sparse one: one dense solve of a small
# component is ~10x cheaper than its share of a sparse solve of the whole graph.
_DENSE_CELLS = 250_000


def _assign(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, needed: np.ndarray, n_rows: int, n_cols: int
) -> np.ndarray:
    """Maximum-weight matching, solved per connected component of the pair graph.

    Parameters
    ----------
    rows, cols : np.ndarray
        Dense true / predicted index (< n_rows, < n_cols) of each pair.
    weights : np.ndarray
        Positive weight of each pair.
    needed : np.ndarray
        Boolean per pair; components without a needed pair are not solved
        (what they match cannot change the statistics).

    Returns
    -------
    np.ndarray
        Indices of the chosen pairs.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, n_rows + cols)), shape=(n_rows + n_cols,) * 2)
    _, component = csgraph.connected_components(graph, directed=False)
    pair_component = component[rows]
    solve = np.zeros(component.max() + 1, bool)
    solve[pair_component[needed]] = True
    order = np.flatnonzero(solve[pair_component])
    order = order[np.argsort(pair_component[order], kind="stable")]
    groups = np.split(order, np.flatnonzero(np.diff(pair_component[order])) + 1)
    chosen, large = [], []
    for pairs in groups:
        if len(pairs) == 1:  # a lone pair is its own optimum
            chosen.append(pairs)
            continue
        row_ids, r = np.unique(rows[pairs], return_inverse=True)
        col_ids, c = np.unique(cols[pairs], return_inverse=True)
        if len(row_ids) * len(col_ids) > _DENSE_CELLS:
            large.append(pairs)
            continue
        dense = np.zeros((len(row_ids), len(col_ids)))
        dense[r, c] = weights[pairs]
        pair_at = np.full(dense.shape, -1, dtype=np.int64)
        pair_at[r, c] = pairs
        # cells without a pair weigh 0: assigning one adds nothing, so it is dropped
        picked = pair_at[linear_sum_assignment(dense, maximize=True)]
        chosen.append(picked[picked >= 0])
    if large:
        pairs = np.concatenate(large)
        chosen.append(pairs[_max_weight_matching(rows[pairs], cols[pairs], weights[pairs])])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def _match_one_threshold(
    thresh: float, t_index: np.ndarray, p_index: np.ndarray, scores: np.ndarray, n_true: int, n_pred: int
) -> tuple[int, float]:
    """True positives and their score sum at one threshold (see :func:`matching_from_overlaps`)."""
    n_matched = min(n_true, n_pred)
    if n_matched == 0:
        return 0, 0.0
    if thresh == 0.0:
        # Reference quirk, kept: at 0 every assigned pair passes (scores >= 0),
        # overlapping or not, so TP = min(n_true, n_pred); the assignment itself
        # maximises the IoU sum.
        chosen = _assign(t_index, p_index, scores, np.ones(len(scores), bool), n_true, n_pred)
        return n_matched, float(np.sum(scores[chosen]))
    passing = scores >= thresh
    if not np.any(passing):
        return 0, 0.0
    # E-degree of every object: a passing pair whose two objects pass with no
    # other partner is in every optimal assignment (dropping it loses a TP and
    # nothing can take its place).  For IoU > 0.5 that is every passing pair.
    true_degree = np.bincount(t_index[passing], minlength=n_true)
    pred_degree = np.bincount(p_index[passing], minlength=n_pred)
    forced = passing & (true_degree[t_index] == 1) & (pred_degree[p_index] == 1)
    tp = int(np.count_nonzero(forced))
    score_sum = float(np.sum(scores[forced]))
    if tp == int(np.count_nonzero(passing)):
        return tp, score_sum
    # The rest: objects not taken by forced pairs.  The reference maximises
    # (#passing pairs) + (sum of all assigned scores) / (2 n), so pairs below
    # the threshold can break ties between equally many TPs; solve exactly on
    # the connected parts of the remaining overlap graph that hold a passing pair.
    true_taken = np.zeros(n_true, bool)
    pred_taken = np.zeros(n_pred, bool)
    true_taken[t_index[forced]] = True
    pred_taken[p_index[forced]] = True
    free = ~true_taken[t_index] & ~pred_taken[p_index]
    sub_scores, sub_passing = scores[free], passing[free]
    weights = sub_passing.astype(np.float64) + sub_scores / (2 * n_matched)
    chosen = _assign(t_index[free], p_index[free], weights, sub_passing, n_true, n_pred)
    chosen = chosen[sub_passing[chosen]]
    return tp + len(chosen), score_sum + float(np.sum(sub_scores[chosen]))


def matching_from_overlaps(
    true_ids: np.ndarray,
    pred_ids: np.ndarray,
    counts: np.ndarray,
    thresholds: float | Sequence[float] = 0.5,
    true_sizes: tuple[np.ndarray, np.ndarray] | None = None,
    pred_sizes: tuple[np.ndarray, np.ndarray] | None = None,
    criterion: str = "iou",
) -> list[MatchingStats]:
    """Matching statistics from a sparse overlap table.

    Parameters
    ----------
    true_ids, pred_ids, counts : np.ndarray
        One row per pair of labels sharing ``counts`` voxels.  Rows with a 0
        on either side are background; they only contribute to sizes that are
        derived from the table.  Repeated pairs (e.g. from several blocks) add up.
    thresholds : float or sequence of float
        Score thresholds in [0, 1]; a pair with score >= threshold can be a TP.
    true_sizes, pred_sizes : (ids, sizes) or None
        Total voxels of each object.  ``None`` sums the table's rows, which is
        right when the table covers every voxel (background pairs included).
        The blockwise evaluation stores only annotated voxels, so it passes the
        predicted sizes from the RAG nodes.  Objects with size 0 do not count.
    criterion : {'iou', 'iot', 'iop'}
        Pair score, as in the reference.

    Returns
    -------
    list[MatchingStats]
        One entry per threshold, in the order given.

    Raises
    ------
    ValueError
        Thresholds outside [0, 1], an unknown criterion, table arrays of
        different lengths or negative counts, sizes missing or smaller than
        an object's overlaps.

    Notes
    -----
    The assignment maximises, as the reference's Hungarian step does, the
    number of pairs at or above the threshold and then the sum of all
    assigned scores.  Pairs above 0.5 IoU are unique on both sides, so they
    are TPs with no assignment at all; an assignment is only solved for
    objects with two or more passing partners (thresholds <= 0.5), on each
    connected part of the remaining overlap graph: Hungarian on a dense
    matrix for small parts, SciPy's sparse full matching for large ones.

    Examples
    --------
    One true object of 4 voxels; a prediction covers 3 of them (IoU 0.75):

    >>> [s.tp for s in matching_from_overlaps([1, 1], [7, 0], [3, 1], [0.5, 0.8])]
    [1, 0]
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r} is unknown; allowed: {', '.join(CRITERIA)}")
    thresholds = check_thresholds(thresholds)
    t = np.asarray(true_ids).ravel()
    p = np.asarray(pred_ids).ravel()
    c = np.asarray(counts).ravel()
    if not (t.shape == p.shape == c.shape):
        raise ValueError(f"overlap table: true_ids {t.shape}, pred_ids {p.shape} and counts {c.shape} must have one length")
    if c.size and np.min(c) < 0:
        raise ValueError("overlap table: counts must be non-negative voxel counts")
    t, p, c = t.astype(np.uint64), p.astype(np.uint64), c.astype(np.int64)
    t_objects, t_sizes = _size_lookup(true_sizes, t, c, "true_sizes")
    p_objects, p_sizes = _size_lookup(pred_sizes, p, c, "pred_sizes")
    n_true, n_pred = len(t_objects), len(p_objects)

    # object pairs: drop background and empty rows, add up repeated pairs
    inside = (t != 0) & (p != 0) & (c > 0)
    t_index = np.searchsorted(t_objects, t[inside])
    p_index = np.searchsorted(p_objects, p[inside])
    key, inverse = np.unique(t_index.astype(np.int64) * max(n_pred, 1) + p_index, return_inverse=True)
    pair_counts = np.bincount(inverse.ravel(), weights=c[inside], minlength=len(key))
    t_index, p_index = np.divmod(key, max(n_pred, 1))
    scores = _pair_scores(criterion, pair_counts, t_sizes[t_index].astype(np.float64), p_sizes[p_index].astype(np.float64))

    results = []
    for thresh in thresholds:
        tp, score_sum = _match_one_threshold(thresh, t_index, p_index, scores, n_true, n_pred)
        results.append(_stats(criterion, thresh, tp, n_true, n_pred, score_sum))
    return results


def matching(
    truth: np.ndarray, prediction: np.ndarray, thresholds: float | Sequence[float] = 0.5, criterion: str = "iou"
) -> list[MatchingStats]:
    """Matching statistics of a predicted label image against the true one.

    Parameters
    ----------
    truth, prediction : np.ndarray
        Non-negative integer label images of one shape (2D, 3D, ...); 0 is background.
    thresholds : float or sequence of float
        Thresholds in [0, 1] on the pair score.
    criterion : {'iou', 'iot', 'iop'}

    Returns
    -------
    list[MatchingStats]
        One per threshold.

    Examples
    --------
    >>> truth = np.zeros((8, 8), int); truth[:4, :4] = 1
    >>> prediction = np.zeros((8, 8), int); prediction[:4, :3] = 5   # IoU 12 / 16
    >>> [(s.tp, s.fp, s.fn, s.mean_matched_score) for s in matching(truth, prediction, [0.5, 0.8])]
    [(1, 0, 0, 0.75), (0, 1, 1, 0.0)]
    """
    return matching_from_overlaps(*overlap_table(truth, prediction), thresholds=thresholds, criterion=criterion)


def matching_dataset(
    truths: Iterable[np.ndarray],
    predictions: Iterable[np.ndarray],
    thresholds: float | Sequence[float] = 0.5,
    criterion: str = "iou",
    by_image: bool = False,
) -> list[MatchingStats]:
    """Matching statistics of a dataset of image pairs, aggregated like the reference.

    Parameters
    ----------
    truths, predictions : iterables of np.ndarray
        Pairs of label images (each pair one shape; pairs may differ).
    thresholds, criterion
        As in :func:`matching`.
    by_image : bool
        False (default): TP/FP/FN, object counts and IoU sums are pooled over
        the images and the ratios computed once.  True: ratios are averaged
        over images (counts still summed).

    Returns
    -------
    list[MatchingStats]
        One per threshold.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 0]]); b = np.array([[1, 0, 0, 0]])
    >>> matching_dataset([a, a], [a, b], 0.5)[0].tp    # IoU 1 and 0.5
    2
    """
    truths, predictions = list(truths), list(predictions)
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} true images but {len(predictions)} predictions; give one prediction per image")
    if not truths:
        raise ValueError("matching_dataset: no images given")
    thresholds = check_thresholds(thresholds)
    per_image = [matching(t, p, thresholds, criterion) for t, p in zip(truths, predictions)]
    return [_aggregate([stats[k] for stats in per_image], by_image) for k in range(len(thresholds))]


# -- a pipeline run: stored contingency tables + RAG node sizes + LUTs ---------


def _relabelled_sizes(node_ids: np.ndarray, node_sizes: np.ndarray, lut_ids: np.ndarray, lut_segments: np.ndarray):
    """Segment sizes: fragment sizes summed through a LUT (ids missing from the LUT keep theirs)."""
    from workers import evaluate as evaluate_worker

    zeros = np.zeros(len(node_ids), dtype=np.uint64)
    segment_ids, _, sizes = evaluate_worker.relabel_contingency((node_ids, zeros, node_sizes), lut_ids, lut_segments)
    return segment_ids, sizes


def matching_of_run(run, thresholds: Sequence[float], criterion: str = "iou") -> dict:
    """Matching table of every segmentation of a finished run, from what it stored.

    Parameters
    ----------
    run : blockseg.pipeline.Run
        An opened run whose evaluate stage has finished.
    thresholds : sequence of float
        IoU thresholds in [0, 1].
    criterion : {'iou', 'iot', 'iop'}

    Returns
    -------
    dict
        ``{"criterion", "iou_thresholds", "ground_truth", "segmentations":
        {name: {"foreground_iou", "matching": {threshold: stats}}}}``, one
        entry ``"fragments"`` plus one per segments threshold (keys ``repr``
        of the float, as in ``scores.json``).

    Notes
    -----
    The evaluate stage's per-block contingency tables count only annotated
    voxels (ground truth != 0), which gives the true objects whole; the
    predicted objects' full sizes come from the RAG nodes' voxel counts
    (a fragment lies in its home block only), summed through each LUT.
    Nothing is read from the volumes.
    """
    from blockseg.graph import StoreError
    from blockseg.stages import unpack_arrays
    from workers import evaluate as evaluate_worker

    thresholds = check_thresholds(thresholds)
    results = run.store.block_results("evaluate")
    if not results:
        raise StoreError("matching: the evaluate stage has stored no contingency tables; run `blockseg evaluate` first")
    table = evaluate_worker.merge_contingency(tuple(unpack_arrays(data)) for data in results.values())
    nodes = run.store.read_nodes()
    node_ids = np.asarray(nodes.ids, dtype=np.uint64)
    node_sizes = np.asarray(nodes.sizes, dtype=np.int64)
    true_ids, true_sums = _sizes_from(table[1], table[2])

    def score(seg_table, seg_ids, seg_sizes) -> dict:
        try:
            stats = matching_from_overlaps(
                seg_table[1], seg_table[0], seg_table[2], thresholds,
                true_sizes=(true_ids, true_sums), pred_sizes=(seg_ids, seg_sizes), criterion=criterion,
            )
        except ValueError as error:
            # only a store whose nodes and evaluate tables come from different runs gets here
            raise StoreError(
                f"matching: the RAG nodes do not match the evaluate stage's tables ({error}); "
                "rerun the pipeline with --restart"
            ) from None
        fg = foreground_iou_from_overlaps(
            seg_table[1], seg_table[0], seg_table[2],
            true_foreground=int(true_sums[true_ids != 0].sum()),
            pred_foreground=int(seg_sizes[seg_ids != 0].sum()),
        )
        return {"foreground_iou": fg, "matching": {repr(s.thresh): s.to_dict() for s in stats}}

    segmentations = {"fragments": score(table, node_ids, node_sizes)}
    for threshold in run.config.stages.segments.thresholds:
        lut_ids, lut_segments = run.store.read_lut(threshold)
        seg_table = evaluate_worker.relabel_contingency(table, lut_ids, lut_segments)
        seg_ids, seg_sizes = _relabelled_sizes(node_ids, node_sizes, lut_ids, lut_segments)
        segmentations[repr(float(threshold))] = score(seg_table, seg_ids, seg_sizes)
    return {
        "criterion": criterion,
        "iou_thresholds": thresholds,
        "ground_truth": str(run.ground_truth.url),
        "segmentations": segmentations,
    }
