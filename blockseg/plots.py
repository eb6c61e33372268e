"""Pictures of a run's scores: VOI against the threshold and the split/merge trade-off.

matplotlib is an optional extra (``pip install "blockseg[plots]"``); without
it :func:`plot_scores` raises :class:`PlotsUnavailable` with one line that
says so, and :func:`write_scores_png` only logs that line, so a run never
fails for want of a picture.

Every PNG written here carries the numbers it plots as JSON in a PNG text
chunk (:data:`PLOTTED_KEY`), so a test, a report or a user can check the
picture against ``scores.json`` without reading pixels
(:func:`read_plotted`).  The figures are drawn on matplotlib's Agg canvas
directly, never through ``pyplot``: no global figure state, no display, safe
in a driver that runs other threads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from blockseg.stage_errors import naming

log = logging.getLogger("blockseg")

#: PNG text chunk holding the plotted arrays as JSON.
PLOTTED_KEY = "blockseg:plotted"

_INSTALL_HINT = 'plots need matplotlib: pip install "blockseg[plots]" (or matplotlib>=3.8)'


class PlotsUnavailable(ImportError):
    """matplotlib is not installed; the message is one line saying how to install it."""


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # only the missing optional extra ends up here
        raise PlotsUnavailable(_INSTALL_HINT) from None
    return Figure, FigureCanvasAgg


def _threshold_rows(scores: Mapping[str, Any]) -> list[tuple[float, dict]]:
    """The per-threshold scores in increasing threshold order."""
    rows = [(float(key), value) for key, value in scores.get("thresholds", {}).items()]
    return sorted(rows, key=lambda row: row[0])


def scores_curves(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The arrays :func:`plot_scores` draws, taken from a ``scores.json`` dict.

    Parameters
    ----------
    scores : mapping
        What the evaluate stage writes: ``{"fragments": {...}, "thresholds":
        {"0.1": {"voi_split", "voi_merge", ...}, ...}, "best": {"threshold", ...}}``.

    Returns
    -------
    dict
        ``threshold``, ``voi_split``, ``voi_merge``, ``voi_sum`` (lists, in
        increasing threshold order), ``best_threshold`` (float or None) and
        ``fragments`` (the fragments' split and merge, or None).

    Examples
    --------
    >>> s = {"thresholds": {"0.5": {"voi_split": 0.2, "voi_merge": 0.1, "voi_sum": 0.3},
    ...                     "0.1": {"voi_split": 0.5, "voi_merge": 0.0, "voi_sum": 0.5}},
    ...      "best": {"threshold": 0.5}}
    >>> scores_curves(s)["threshold"]
    [0.1, 0.5]
    """
    rows = _threshold_rows(scores)
    best = scores.get("best") or {}
    fragments = scores.get("fragments")
    return {
        "threshold": [t for t, _ in rows],
        "voi_split": [float(s["voi_split"]) for _, s in rows],
        "voi_merge": [float(s["voi_merge"]) for _, s in rows],
        "voi_sum": [float(s.get("voi_sum", s["voi_split"] + s["voi_merge"])) for _, s in rows],
        "best_threshold": float(best["threshold"]) if "threshold" in best else None,
        "fragments": (
            {"voi_split": float(fragments["voi_split"]), "voi_merge": float(fragments["voi_merge"])}
            if fragments else None
        ),
    }


def scores_figure(scores: Mapping[str, Any]):
    """The figure of :func:`plot_scores`, not saved: VOI against threshold and the trade-off.

    Parameters
    ----------
    scores : mapping
        A ``scores.json`` dict (see :func:`scores_curves`).

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: ``axes[0]`` holds the lines ``voi_split``, ``voi_merge``,
        ``voi_sum`` (x: threshold), ``axes[1]`` the line ``trade-off``
        (x: split, y: merge); each line's label is its name.
    """
    Figure, FigureCanvasAgg = _figure_class()
    curves = scores_curves(scores)
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    by_threshold, tradeoff = figure.subplots(1, 2)
    t = curves["threshold"]
    by_threshold.plot(t, curves["voi_split"], "o-", color="tab:blue", label="voi_split")
    by_threshold.plot(t, curves["voi_merge"], "s-", color="tab:red", label="voi_merge")
    by_threshold.plot(t, curves["voi_sum"], "--", color="0.3", label="voi_sum")
    best = curves["best_threshold"]
    if best is not None:
        by_threshold.axvline(best, color="tab:green", linestyle=":", label=f"best {best:g}")
    by_threshold.set_xlabel("merge threshold")
    by_threshold.set_ylabel("VOI (bits)")
    by_threshold.set_title("VOI against the threshold")
    by_threshold.legend(loc="best", fontsize="small")

    tradeoff.plot(curves["voi_split"], curves["voi_merge"], "o-", color="tab:purple", label="trade-off")
    _tradeoff_scales(tradeoff)
    _label_thresholds(tradeoff, t, curves["voi_split"], curves["voi_merge"])
    if best is not None and best in t:
        i = t.index(best)
        tradeoff.plot([curves["voi_split"][i]], [curves["voi_merge"][i]], "*", color="tab:green",
                      markersize=16, label=f"best {best:g}: VOI sum {curves['voi_sum'][i]:.4f}")
    tradeoff.set_xlabel("VOI split (bits): over-segmentation")
    tradeoff.set_ylabel("VOI merge (bits): under-segmentation")
    title = "split / merge trade-off (symlog axes)"
    if curves["fragments"] is not None:  # far off the curve's scale, so told rather than drawn
        title += f"\n(fragments: split {curves['fragments']['voi_split']:.3f}, merge {curves['fragments']['voi_merge']:.3f})"
    tradeoff.set_title(title, fontsize="medium")
    tradeoff.legend(loc="best", fontsize="small")
    return figure


def _tradeoff_scales(axes) -> None:
    # The curve spans orders of magnitude (merge errors of bits past the knee,
    # hundredths near it); symlog keeps the knee, where the best threshold
    # lies, readable and still shows the exact zeros of the extreme thresholds.
    axes.set_xscale("symlog", linthresh=0.01)
    axes.set_yscale("symlog", linthresh=0.01)
    axes.grid(True, which="major", alpha=0.3)


def _label_thresholds(axes, thresholds: list[float], splits: list[float], merges: list[float]) -> None:
    """Name the points by their threshold, skipping one that would sit on the last name written."""
    axes.autoscale_view()
    to_axes = axes.transData + axes.transAxes.inverted()  # fractions of the axes, after the symlog
    last = None
    for threshold, split, merge in zip(thresholds, splits, merges):
        where = to_axes.transform((split, merge))
        if last is not None and abs(where[0] - last[0]) < 0.06 and abs(where[1] - last[1]) < 0.04:
            continue  # crowded (thresholds that change nothing): the curve says enough
        axes.annotate(f"{threshold:g}", (split, merge), textcoords="offset points", xytext=(4, 4),
                      fontsize="x-small")
        last = where


def _save(figure, path: str | Path, plotted: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):  # a full disk fails the write, which names no file
        figure.savefig(path, format="png", dpi=100, metadata={PLOTTED_KEY: json.dumps(plotted)})
    return path


def plot_scores(scores: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``scores.png``: VOI split, merge and sum against the threshold, and the trade-off curve.

    Parameters
    ----------
    scores : mapping
        A ``scores.json`` dict, as the evaluate stage writes it.
    path : str or Path
        The PNG to write (its folder is created).

    Returns
    -------
    Path
        ``path``.  The PNG's text chunk :data:`PLOTTED_KEY` holds
        :func:`scores_curves` of ``scores`` as JSON (see :func:`read_plotted`).

    Raises
    ------
    PlotsUnavailable
        matplotlib is not installed.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> s = {"thresholds": {"0.1": {"voi_split": 0.5, "voi_merge": 0.0, "voi_sum": 0.5},
    ...                     "0.5": {"voi_split": 0.2, "voi_merge": 0.1, "voi_sum": 0.3}},
    ...      "best": {"threshold": 0.5}}
    >>> png = plot_scores(s, pathlib.Path(tempfile.mkdtemp()) / "scores.png")
    >>> read_plotted(png)["voi_sum"]
    [0.5, 0.3]
    """
    return _save(scores_figure(scores), path, scores_curves(scores))


def tradeoffs_figure(curves: Mapping[str, Mapping[str, Any]], best: str | None = None):
    """Every combination's split/merge trade-off curve on one axes.

    Parameters
    ----------
    curves : mapping of str to mapping
        Per label (e.g. ``"min_seed_distance=60, scoring=hist_quant_50"``),
        its :func:`scores_curves` (or a ``scores.json`` dict).
    best : str, optional
        The label to draw thick and mark with a star at its best threshold.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; one line per label, in the order given, labelled with it.
    """
    Figure, FigureCanvasAgg = _figure_class()
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for label, curve in curves.items():
        curve = curve if "voi_split" in curve and isinstance(curve["voi_split"], list) else scores_curves(curve)
        emphasis = {"linewidth": 2.8, "zorder": 3} if label == best else {"linewidth": 1.2, "alpha": 0.8}
        (line,) = axes.plot(curve["voi_split"], curve["voi_merge"], "o-", markersize=3, label=label, **emphasis)
        if label == best and curve["best_threshold"] in curve["threshold"]:
            i = curve["threshold"].index(curve["best_threshold"])
            axes.plot([curve["voi_split"][i]], [curve["voi_merge"][i]], "*", color=line.get_color(),
                      markersize=18, zorder=4, label=f"best: threshold {curve['best_threshold']:g}")
    _tradeoff_scales(axes)
    axes.set_xlabel("VOI split (bits): over-segmentation")
    axes.set_ylabel("VOI merge (bits): under-segmentation")
    axes.set_title("split / merge trade-off per combination (points: merge thresholds; symlog axes)")
    axes.legend(loc="best", fontsize="x-small")
    return figure


def plot_tradeoffs(curves: Mapping[str, Mapping[str, Any]], path: str | Path, best: str | None = None) -> Path:
    """Write one PNG with every combination's trade-off curve (see :func:`tradeoffs_figure`).

    Parameters
    ----------
    curves : mapping of str to mapping
        Per label, a ``scores.json`` dict or its :func:`scores_curves`.
    path : str or Path
        The PNG to write.
    best : str, optional
        The label of the best combination.

    Returns
    -------
    Path
        ``path``; its text chunk :data:`PLOTTED_KEY` holds ``{label: curves}`` as JSON.
    """
    as_curves = {
        label: curve if isinstance(curve.get("voi_split"), list) else scores_curves(curve)
        for label, curve in curves.items()
    }
    return _save(tradeoffs_figure(as_curves, best), path, as_curves)


def read_plotted(path: str | Path) -> Any:
    """The arrays a PNG written here plots, from its text chunk :data:`PLOTTED_KEY`.

    Parameters
    ----------
    path : str or Path
        A PNG written by :func:`plot_scores` or :func:`plot_tradeoffs`.

    Returns
    -------
    dict
        The JSON stored with the picture.
    """
    from PIL import Image  # a matplotlib dependency

    with Image.open(path) as image:
        return json.loads(image.text[PLOTTED_KEY])


def write_scores_png(scores: Mapping[str, Any], output_dir: str | Path) -> Path | None:
    """Write ``scores.png`` beside ``scores.json``; without matplotlib, say so in one line and write nothing.

    Parameters
    ----------
    scores : mapping
        The run's scores.
    output_dir : str or Path
        The run's output folder.

    Returns
    -------
    Path or None
        The PNG, or None when matplotlib is missing.
    """
    try:
        return plot_scores(scores, Path(output_dir) / "scores.png")
    except PlotsUnavailable as missing:
        # an info line, not a warning: the base install leaves the plots out by
        # design, and the demo of a fresh install should not look as if it failed
        log.info("no scores.png: %s", missing)
        return None
