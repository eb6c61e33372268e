"""``blockseg tune CONFIG --roi OZ OY OX SZ SY SX --grid KEY=V1,V2 ...``: find the best parameters on a ground-truth ROI.

Every combination of the grid (plus the config as it is, when the grid does
not hold its values) runs as its own small run of the config on the ROI, all
at once on one dask cluster, each in ``<output>/tune/<key>/`` with its own
ledger, so a killed sweep resumes and finished combinations are not
recomputed.  Then the sweep prints one row per combination at its best
threshold, writes ``tune.json``, ``tune.png`` (every trade-off curve),
``tune.html`` (self-contained) in ``<output>/tune/`` and the best
combination as ``CONFIG.tuned.yaml`` beside the config, ready for the whole
volume.  The parts: :mod:`blockseg.tune_plan` (checks, folders),
:mod:`blockseg.tune_run` (the runs), :mod:`blockseg.tune_report` (what is written).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from blockseg.tune_plan import Outcome, Sweep, plan_sweep
from blockseg.tune_report import (
    format_table, pick_best, table_rows, write_tune_html, write_tune_json, write_tune_png, write_tuned_config,
)
from blockseg.tune_run import load_result, run_sweep


@dataclass
class TuneResult:
    """What a sweep found and where it wrote it."""

    sweep: Sweep
    outcomes: list[Outcome]
    rows: list[dict[str, Any]]  # best first, as in the table and tune.json
    table: str
    tuned_config: Path | None
    json_path: Path
    html_path: Path
    figure: Path | None

    @property
    def best(self) -> dict[str, Any] | None:
        """The best row (values, threshold, scores), or None when every combination failed."""
        return self.rows[0] if self.rows and self.rows[0]["best"] is not None else None

    @property
    def ok(self) -> bool:
        """Whether every combination ran to its scores."""
        return all(outcome.failed is None for outcome in self.outcomes)


def tune(
    config: str | Path,
    roi: Sequence[int],
    grid: Sequence[str],
    metric: str = "voi",
    parallel: int | None = None,
    workers: int | None = None,
    client=None,
    say: Callable[[str], None] = print,
) -> TuneResult:
    """Run every combination of ``grid`` on ``roi`` and write the best as ``CONFIG.tuned.yaml``.

    Parameters
    ----------
    config : str or Path
        The pipeline YAML (with ``input.ground_truth``).
    roi : sequence of 6 int
        Offset (z, y, x) and shape in nm, inside the volume and holding ground truth.
    grid : sequence of str
        ``"stages.fragments.min_seed_distance=60,100"``: a dotted config key and its values (YAML).
    metric : str
        ``voi`` (lowest VOI sum), ``rand`` (lowest adapted Rand error) or
        ``f1@IOU`` (highest F1 of instance matching at that IoU).
    parallel : int, optional
        Combinations run at the same time (default: all).
    workers : int, optional
        Local worker processes (default: the config's ``cluster.local.workers``).
    client : distributed.Client, optional
        Run on this cluster instead of the config's.
    say : callable
        Where progress lines go.

    Returns
    -------
    TuneResult

    Raises
    ------
    blockseg.errors.ConfigError
        A bad argument, in one line, before anything is written.

    Examples
    --------
    >>> result = tune("demo.yaml", [0, 0, 0, 640, 1280, 1280],
    ...               ["stages.agglomerate.scoring=hist_quant_50,hist_quant_75"])  # doctest: +SKIP
    >>> result.best["values"]  # doctest: +SKIP
    {'stages.agglomerate.scoring': 'hist_quant_75'}
    """
    import contextlib

    from blockseg.cluster import open_client

    sweep = plan_sweep(config, roi, grid, metric)
    if workers:
        sweep.base_config.cluster.local.workers = workers
    sweep.folder.mkdir(parents=True, exist_ok=True)
    roi_text = f"offset {list(sweep.roi.offset)} shape {list(sweep.roi.shape)} nm"
    extra = sum(not c.in_grid for c in sweep.combinations)
    say(f"tune: {len(sweep.combinations)} combination(s){' (the grid + the config as it is)' if extra else ''} "
        f"on the ROI {roi_text}, metric {metric}, in {sweep.folder}")
    if client is None and any(load_result(c) is None for c in sweep.combinations):
        opened = open_client(sweep.base_config.cluster, quiet=True, log_dir=sweep.folder / "logs")
    else:  # nothing left to run (a rerun of a finished sweep, e.g. with another --metric): no cluster
        opened = contextlib.nullcontext(client)
    with opened as active:
        outcomes = run_sweep(sweep, active, parallel=parallel, say=say)
    return _write_outputs(sweep, outcomes)


def _write_outputs(sweep: Sweep, outcomes: list[Outcome]) -> TuneResult:
    from blockseg.plots import PlotsUnavailable, plot_scores
    from blockseg.tune_report import choose_threshold

    rows = table_rows(sweep, outcomes)
    table = format_table(sweep, rows)
    best_index = pick_best(outcomes, sweep.metric)
    tuned = figure = best_png = None
    if best_index is not None:
        best = outcomes[best_index]
        tuned = write_tuned_config(sweep, best.combination, choose_threshold(best, sweep.metric))
    try:
        figure = write_tune_png(sweep, rows, outcomes)
        if best_index is not None:
            best_png = plot_scores(outcomes[best_index].scores, outcomes[best_index].combination.folder / "scores.png")
    except PlotsUnavailable as missing:
        import logging

        logging.getLogger("blockseg").warning("no tune.png: %s", missing)
    json_path = write_tune_json(sweep, rows, outcomes, tuned)
    html_path = write_tune_html(sweep, rows, table, tuned, figure, best_png)
    return TuneResult(sweep, outcomes, rows, table, tuned, json_path, html_path, figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``blockseg tune`` arguments."""
    parser.add_argument("config", help="pipeline YAML with input.ground_truth")
    parser.add_argument("--roi", type=int, nargs=6, required=True, metavar=("OZ", "OY", "OX", "SZ", "SY", "SX"),
                        help="offset and shape in nm of a part of the volume with ground truth")
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                        help="a config key (dotted, e.g. stages.fragments.min_seed_distance) and its values; repeat")
    parser.add_argument("--metric", default="voi", help="voi (default), rand or f1@IOU (e.g. f1@0.5): what best means")
    parser.add_argument("--parallel", type=int, metavar="N", help="combinations run at the same time (default: all)")
    parser.add_argument("--workers", type=int, help="local worker processes (default: one per core)")


def main(args: argparse.Namespace) -> int:
    """``blockseg tune``: 0 when every combination ran, 1 when some failed (the rest still compared)."""
    from blockseg.errors import ConfigError

    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel: {args.parallel} must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: {args.workers} must be at least 1")
    result = tune(args.config, args.roi, args.grid, metric=args.metric, parallel=args.parallel, workers=args.workers)
    print(result.table)
    best = result.best
    if best is None:
        print("tune: every combination failed; no tuned config written")
        return 1
    values = ", ".join(f"{k}={v}" for k, v in best["values"].items())
    chosen = best["best"]
    print(f"best: {values}{' (the config as it is)' if best['baseline'] else ''}: threshold {chosen['threshold']:g}, "
          f"VOI sum {chosen['voi_sum']:.4f}, adapted Rand {chosen['adapted_rand_error']:.4f}"
          + (f", F1@{result.sweep.iou:g} {chosen['f1']:.4f}" if "f1" in chosen else ""))
    print(f"tuned config: {result.tuned_config} (whole volume: blockseg run {result.tuned_config})")
    written = [result.json_path, result.html_path] + ([result.figure] if result.figure else [])
    print(f"written: {', '.join(str(p) for p in written)}")
    return 0 if result.ok else 1
