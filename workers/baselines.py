"""What a user would run instead of blockseg: plain waterz on the whole volume, scored the way blockseg scores.

The issue's oracle for the fragments: ``waterz.agglomerate`` on the whole
volume at once (no blocks), on its own fragments or on given ones, with the
same scoring function and VOI (bits, ground truth 0 ignored) as blockseg,
best over a list of thresholds.

Examples
--------
>>> import numpy as np
>>> truth = np.ones((4, 8, 8), np.uint64); truth[:, :, 4:] = 2
>>> affs = np.ones((3, 4, 8, 8), np.float32); affs[2, :, :, 4] = 0.0
>>> round(whole_volume_waterz(affs, truth, thresholds=[0.5])["voi_sum"], 6)
0.0
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import waterz

from workers.evaluate import evaluate_arrays
from workers.scoring import scoring_function
from workers.silence import silence_stdout

__all__ = ["WATERZ_THRESHOLDS", "whole_volume_waterz"]

# 0.05 .. 0.95: a finer list than blockseg's default thresholds, so the peer
# gets the benefit of the doubt
WATERZ_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def whole_volume_waterz(
    affinities: np.ndarray,
    ground_truth: np.ndarray,
    fragments: np.ndarray | None = None,
    scoring: str = "hist_quant_75",
    thresholds: Sequence[float] = WATERZ_THRESHOLDS,
) -> dict[str, float]:
    """The best VOI of plain waterz on a whole volume over ``thresholds``.

    Parameters
    ----------
    affinities : ndarray, shape (3, z, y, x)
        float32 in [0, 1]; channel ``c`` at ``p`` is the edge to ``p - e_c``.
    ground_truth : ndarray, shape (z, y, x)
        Integer labels; 0 is not scored.
    fragments : ndarray, optional
        Fragments to agglomerate (any integer ids, 0 background); waterz makes
        its own (its watershed over the affinity graph) when None.
    scoring : str
        A name of :data:`workers.scoring.SCORING_FUNCTIONS`.
    thresholds : sequence of float
        Where to cut the merge tree.

    Returns
    -------
    dict
        ``voi_sum``, ``voi_split``, ``voi_merge`` and ``threshold`` of the best
        threshold.
    """
    affs = np.ascontiguousarray(affinities[:3], dtype=np.float32)
    given = None
    if fragments is not None:
        import fastremap

        given, _ = fastremap.renumber(np.ascontiguousarray(fragments, dtype=np.uint64), preserve_zero=True)
        given = given.astype(np.uint64, copy=False)
    best: dict[str, float] | None = None
    with silence_stdout():
        results = waterz.agglomerate(
            affs, list(thresholds), fragments=given, scoring_function=scoring_function(scoring)
        )
        for threshold, segmentation in zip(thresholds, results):
            scores = evaluate_arrays(segmentation, ground_truth)
            if best is None or scores["voi_sum"] < best["voi_sum"]:
                best = {key: float(scores[key]) for key in ("voi_sum", "voi_split", "voi_merge")}
                best["threshold"] = float(threshold)
    assert best is not None, "no thresholds"
    return best
