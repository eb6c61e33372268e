"""Instance matching statistics: the per-threshold record, its ratios, aggregation and printing.

:class:`MatchingStats` holds the counts and ratios of one matching at one
threshold, with the names of StarDist's ``Matching``; :func:`_stats` derives
the ratios from counts as the reference does, :func:`_aggregate` pools the
statistics of several images, and :func:`format_matching` prints the table
of :func:`blockseg.evaluate.matching_of_run`.

Examples
--------
>>> check_thresholds(0.5)
[0.5]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


CRITERIA = ("iou", "iot", "iop")
"""Pair scores: intersection over union, over the true object, over the predicted object."""


@dataclass(frozen=True)
class MatchingStats:
    """Matching statistics at one threshold (field names as in StarDist's ``Matching``).

    ``sum_matched_score`` (the IoU sum over true positives) is kept as well,
    since datasets aggregate by summing it.
    """

    criterion: str
    thresh: float
    fp: int
    tp: int
    fn: int
    precision: float
    recall: float
    accuracy: float
    f1: float
    n_true: int
    n_pred: int
    mean_true_score: float
    mean_matched_score: float
    panoptic_quality: float
    sum_matched_score: float

    def to_dict(self) -> dict:
        """Plain ``dict`` of JSON-serialisable values."""
        return asdict(self)


def _ratio(numerator: float, denominator: float) -> float:
    # the reference defines every ratio with a zero denominator as 0
    return float(numerator) / float(denominator) if denominator > 0 else 0.0


def _stats(criterion: str, thresh: float, tp: int, n_true: int, n_pred: int, score_sum: float) -> MatchingStats:
    """Derive the ratios from counts the way the reference does (0 whenever tp is 0)."""
    fp, fn = n_pred - tp, n_true - tp
    return MatchingStats(
        criterion=criterion,
        thresh=float(thresh),
        fp=int(fp),
        tp=int(tp),
        fn=int(fn),
        precision=_ratio(tp, tp + fp) if tp > 0 else 0.0,
        recall=_ratio(tp, tp + fn) if tp > 0 else 0.0,
        accuracy=_ratio(tp, tp + fp + fn) if tp > 0 else 0.0,
        f1=_ratio(2 * tp, 2 * tp + fp + fn) if tp > 0 else 0.0,
        n_true=int(n_true),
        n_pred=int(n_pred),
        mean_true_score=_ratio(score_sum, n_true),
        mean_matched_score=_ratio(score_sum, tp),
        panoptic_quality=_ratio(score_sum, tp + fp / 2 + fn / 2),
        sum_matched_score=float(score_sum),
    )


def check_thresholds(thresholds: float | Iterable[float]) -> list[float]:
    """Matching thresholds as a list of floats in [0, 1].

    Raises
    ------
    ValueError
        If there are none, or one is not a number in [0, 1].
    """
    values = [thresholds] if np.isscalar(thresholds) else list(thresholds)
    if not values:
        raise ValueError("matching thresholds: none given; give IoU thresholds in [0, 1], e.g. 0.5 0.75")
    out = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"matching threshold {value!r} is not a number; allowed: numbers in [0, 1]") from None
        if not 0.0 <= number <= 1.0:  # also rejects NaN
            raise ValueError(f"matching threshold {value!r} is outside [0, 1]; an IoU threshold must lie in [0, 1]")
        out.append(number)
    return out


def _aggregate(per_image: Sequence[MatchingStats], by_image: bool) -> MatchingStats:
    first = per_image[0]
    if by_image:
        # the reference's by_image mode: plain means of the per-image values
        mean = lambda name: float(np.mean([getattr(s, name) for s in per_image]))  # noqa: E731
        total = lambda name: int(sum(getattr(s, name) for s in per_image))  # noqa: E731
        return MatchingStats(
            criterion=first.criterion, thresh=first.thresh, fp=total("fp"), tp=total("tp"), fn=total("fn"),
            precision=mean("precision"), recall=mean("recall"), accuracy=mean("accuracy"), f1=mean("f1"),
            n_true=total("n_true"), n_pred=total("n_pred"), mean_true_score=mean("mean_true_score"),
            mean_matched_score=mean("mean_matched_score"), panoptic_quality=mean("panoptic_quality"),
            sum_matched_score=float(sum(s.sum_matched_score for s in per_image)),
        )
    # default: pool counts and score sums, then take ratios (not a mean of ratios)
    return _stats(
        first.criterion,
        first.thresh,
        tp=sum(s.tp for s in per_image),
        n_true=sum(s.n_true for s in per_image),
        n_pred=sum(s.n_pred for s in per_image),
        score_sum=sum(s.sum_matched_score for s in per_image),
    )


def format_matching(table: dict) -> str:
    """Printable matching table: a row per segmentation, precision / recall / F1 / PQ per IoU threshold."""
    thresholds = table["iou_thresholds"]
    head = f"{'threshold':>10} {'fg_iou':>7}" + "".join(
        f" {'P@' + format(t, 'g'):>7} {'R@' + format(t, 'g'):>7} {'F1@' + format(t, 'g'):>7} {'PQ@' + format(t, 'g'):>7}"
        for t in thresholds
    )
    lines = [head]
    for name, entry in table["segmentations"].items():
        row = f"{name:>10} {entry['foreground_iou']:7.4f}"
        for t in thresholds:
            s = entry["matching"][repr(float(t))]
            row += f" {s['precision']:7.4f} {s['recall']:7.4f} {s['f1']:7.4f} {s['panoptic_quality']:7.4f}"
        lines.append(row)
    return "\n".join(lines)
