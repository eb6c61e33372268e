"""What ``blockseg tune`` leaves: the table, ``tune.json``, ``tune.png``, ``tune.html`` and ``CONFIG.tuned.yaml``.

Each combination is summed up by its best threshold under the chosen metric
(lowest VOI sum, lowest adapted Rand error, or highest F1 at an IoU), and the
best combination is the best of those; on a tie the config's own values win,
then the first in grid order, so a tuned config changes nothing it need not.
"""

from __future__ import annotations

import base64
import copy
import html
import json
from pathlib import Path
from typing import Any

import yaml

from blockseg.tune_plan import Combination, Outcome, Sweep, _set


def choose_threshold(outcome: Outcome, metric: str) -> dict[str, Any] | None:
    """The best threshold of one combination under ``metric``, with its scores.

    Parameters
    ----------
    outcome : Outcome
        A combination's result; None is returned when it failed.
    metric : {'voi', 'rand', 'f1'}

    Returns
    -------
    dict or None
        ``threshold``, ``voi_split``, ``voi_merge``, ``voi_sum``,
        ``adapted_rand_error``, ``f1`` (with metric f1) and ``value``, the
        metric's value (lower is better for voi and rand, higher for f1).
    """
    if outcome.scores is None:
        return None
    rows = outcome.scores["thresholds"]
    if metric == "voi":
        name = min(rows, key=lambda t: (rows[t]["voi_sum"], float(t)))
        value = rows[name]["voi_sum"]
    elif metric == "rand":
        name = min(rows, key=lambda t: (rows[t]["adapted_rand_error"], float(t)))
        value = rows[name]["adapted_rand_error"]
    else:
        name = max(rows, key=lambda t: (outcome.f1.get(t, 0.0), -float(t)))
        value = outcome.f1.get(name, 0.0)
    chosen = {"threshold": float(name), **{k: float(rows[name][k]) for k in
                                            ("voi_split", "voi_merge", "voi_sum", "adapted_rand_error")}}
    if metric == "f1":
        chosen["f1"] = float(outcome.f1.get(name, 0.0))
    chosen["value"] = float(value)
    return chosen


def pick_best(outcomes: list[Outcome], metric: str) -> int | None:
    """Index of the best outcome (ties: the config's own values, then grid order); None if all failed."""
    candidates = [(i, choose_threshold(o, metric)) for i, o in enumerate(outcomes)]
    candidates = [(i, c) for i, c in candidates if c is not None]
    if not candidates:
        return None
    sign = -1.0 if metric == "f1" else 1.0
    return min(candidates, key=lambda ic: (sign * ic[1]["value"], not outcomes[ic[0]].combination.baseline, ic[0]))[0]


def _column(key: str, keys: list[str]) -> str:
    short = key.rsplit(".", 1)[-1]
    return short if sum(k.rsplit(".", 1)[-1] == short for k in keys) == 1 else key


def table_rows(sweep: Sweep, outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One row per combination, best first: its values, chosen threshold and scores, seconds."""
    rows = []
    for outcome in outcomes:
        chosen = choose_threshold(outcome, sweep.metric)
        combination = outcome.combination
        rows.append({
            "key": combination.key, "values": combination.values, "baseline": combination.baseline,
            "recomputed": outcome.recomputed, "seconds": outcome.seconds, "failed": outcome.failed,
            "folder": str(combination.folder), "best": chosen,
        })
    sign = -1.0 if sweep.metric == "f1" else 1.0
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["best"] is None,
                                                    sign * rows[i]["best"]["value"] if rows[i]["best"] else 0.0,
                                                    not rows[i]["baseline"], i))
    return [rows[i] for i in order]


def format_table(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    """The terminal table: rank, key, grid values, threshold, VOI split / merge / sum, adapted Rand, seconds."""
    keys = list(sweep.grid)
    names = [_column(k, keys) for k in keys]
    widths = [max(len(n), *(len(str(r["values"][k])) for r in rows)) for n, k in zip(names, keys)]
    metric_column = [f"f1@{sweep.iou:g}"] if sweep.metric == "f1" else []
    header = ["rank", "key".ljust(12), *(n.ljust(w) for n, w in zip(names, widths)), "threshold", "voi_split",
              "voi_merge", "voi_sum", "adapted_rand", *metric_column, "seconds"]
    lines = ["  ".join(header)]
    for rank, row in enumerate(rows, 1):
        values = [str(row["values"][k]).ljust(w) for k, w in zip(keys, widths)]
        note = " (config)" if row["baseline"] else ""
        if row["best"] is None:
            lines.append("  ".join([f"{'-':>4}", row["key"], *values, f"FAILED: {row['failed']}"]))
            continue
        b = row["best"]
        extra = [f"{b['f1']:>{len(metric_column[0])}.4f}"] if metric_column else []
        lines.append("  ".join([
            f"{rank:>4}", row["key"], *values, f"{b['threshold']:>9g}", f"{b['voi_split']:>9.4f}",
            f"{b['voi_merge']:>9.4f}", f"{b['voi_sum']:>7.4f}", f"{b['adapted_rand_error']:>12.4f}", *extra,
            f"{row['seconds']:>7.1f}",
        ]) + note)
    return "\n".join(lines)


def tuned_config_path(config_path: Path) -> Path:
    """``demo.yaml`` -> ``demo.tuned.yaml`` beside it (so its relative paths still hold)."""
    name = config_path.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return config_path.with_name(name + ".tuned.yaml")


def write_tuned_config(sweep: Sweep, best: Combination, chosen: dict[str, Any]) -> Path:
    """The config with the best combination's values: the whole volume, runnable with ``blockseg run`` as is."""
    data = copy.deepcopy(sweep.base_data)
    for key, value in best.values.items():
        _set(data, key, value)
    roi = sweep.roi
    metric = f"f1@{sweep.iou:g}" if sweep.metric == "f1" else sweep.metric
    header = [
        f"# {sweep.config_path.name} with the best values of `blockseg tune` (metric {metric}) on the ROI",
        f"# offset {list(roi.offset)} shape {list(roi.shape)} nm:",
        *(f"#   {key}: {value}" for key, value in best.values.items()),
        f"# best threshold there {chosen['threshold']:g}: VOI sum {chosen['voi_sum']:.4f} "
        f"(split {chosen['voi_split']:.4f}, merge {chosen['voi_merge']:.4f}), "
        f"adapted Rand {chosen['adapted_rand_error']:.4f}",
        "# Everything else is as in the original, including output (the whole volume, not the ROI).",
    ]
    if best.baseline:
        header.insert(1, "# (the config's own values were already the best of the grid)")
    path = tuned_config_path(sweep.config_path)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def write_tune_json(sweep: Sweep, rows: list[dict[str, Any]], outcomes: list[Outcome], tuned: Path | None) -> Path:
    """``tune.json``: the sweep's arguments, every combination (with its full scores) best first, the best."""
    scores = {o.combination.key: o.scores for o in outcomes}
    f1 = {o.combination.key: o.f1 for o in outcomes if o.f1}
    document = {
        "config": str(sweep.config_path),
        "roi": {"offset": list(sweep.roi.offset), "shape": list(sweep.roi.shape)},
        "metric": f"f1@{sweep.iou!r}" if sweep.metric == "f1" else sweep.metric,
        "grid": sweep.grid,
        "combinations": [{**row, "scores": scores[row["key"]], **({"f1": f1[row["key"]]} if row["key"] in f1 else {})}
                         for row in rows],
        "best": rows[0] if rows and rows[0]["best"] is not None else None,
        "tuned_config": str(tuned) if tuned else None,
    }
    path = sweep.folder / "tune.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    return path


def _label(row: dict[str, Any]) -> str:
    text = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in row["values"].items())
    return text + (" (config)" if row["baseline"] else "")


def write_tune_png(sweep: Sweep, rows: list[dict[str, Any]], outcomes: list[Outcome]) -> Path:
    """``tune.png``: every combination's split/merge trade-off curve, the best drawn thick."""
    from blockseg.plots import plot_tradeoffs

    scores = {o.combination.key: o.scores for o in outcomes}
    curves = {_label(row): scores[row["key"]] for row in rows if scores[row["key"]] is not None}
    best = _label(rows[0]) if rows and rows[0]["best"] is not None else None
    return plot_tradeoffs(curves, sweep.folder / "tune.png", best=best)


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.exists():
        return f"<p>(no figure: {html.escape(alt)} needs matplotlib, <code>pip install \"blockseg[plots]\"</code>)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def write_tune_html(sweep: Sweep, rows: list[dict[str, Any]], table: str, tuned: Path | None,
                    figure: Path | None, best_scores_png: Path | None) -> Path:
    """``tune.html``: one self-contained page (inline images, no script, no network) of the sweep."""
    keys = list(sweep.grid)
    metric = f"f1@{sweep.iou:g}" if sweep.metric == "f1" else sweep.metric
    head = "".join(f"<th>{html.escape(_column(k, keys))}</th>" for k in keys)
    body = []
    for rank, row in enumerate(rows, 1):
        cells = "".join(f"<td>{html.escape(str(row['values'][k]))}</td>" for k in keys)
        b = row["best"]
        if b is None:
            scores = f'<td colspan="{5 + (sweep.iou is not None)}">FAILED: {html.escape(str(row["failed"]))}</td>'
        else:
            scores = "".join(f"<td>{v}</td>" for v in (
                f"{b['threshold']:g}", f"{b['voi_split']:.4f}", f"{b['voi_merge']:.4f}", f"{b['voi_sum']:.4f}",
                f"{b['adapted_rand_error']:.4f}", *([f"{b['f1']:.4f}"] if "f1" in b else [])))
        mark = ' class="best"' if rank == 1 and b is not None else ""
        note = " (config)" if row["baseline"] else ""
        body.append(f"<tr{mark}><td>{rank}</td><td><code>{row['key']}</code>{note}</td>{cells}{scores}"
                    f"<td>{row['seconds']:.1f}</td></tr>")
    roi = sweep.roi
    tuned_line = (f"<p>Best combination written as <code>{html.escape(str(tuned))}</code> "
                  f"(runs on the whole volume with <code>blockseg run</code>).</p>") if tuned else ""
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>blockseg tune: {html.escape(sweep.config_path.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }}
tr.best {{ background: #e3f4e3; font-weight: bold; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>blockseg tune</h1>
<p>Config <code>{html.escape(str(sweep.config_path))}</code>, ROI offset {list(roi.offset)} shape
{list(roi.shape)} nm, {len(rows)} combination(s), metric <b>{metric}</b>; each row at its best threshold.</p>
{tuned_line}
<table>
<thead><tr><th>rank</th><th>key</th>{head}<th>threshold</th><th>voi_split</th><th>voi_merge</th><th>voi_sum</th>
<th>adapted_rand</th>{f"<th>f1@{sweep.iou:g}</th>" if sweep.iou is not None else ""}<th>seconds</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
<h2>Split / merge trade-off of every combination</h2>
{_img(figure, "trade-off curves")}
<h2>The best combination's scores</h2>
{_img(best_scores_png, "scores of the best combination")}
<h2>The table as printed</h2>
<pre>{html.escape(table)}</pre>
</body>
</html>
"""
    path = sweep.folder / "tune.html"
    path.write_text(page)
    return path
