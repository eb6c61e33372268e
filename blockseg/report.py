"""``blockseg report``: one self-contained ``report.html`` about a run.

The report reads what a run leaves in its output folder and shows it in a
page that opens from disk with no network: every stage with its blocks done
(from the ledger), failed (``logs/failed-<stage>.json``), seconds and
Mvoxel/s (``logs/stages.json``, which :func:`record_stages` writes at the end
of every run), the failed blocks with their reasons, the score curves
(``scores.png`` from :mod:`blockseg.plots`, inline as a ``data:`` URI), the
config, and how to look at the outputs (the neuroglancer link and the napari
command of ``blockseg view``).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockseg.config import PipelineConfig
    from blockseg.run_state import Run
    from blockseg.stage_errors import StageReport

log = logging.getLogger("blockseg")

#: The port the report's viewer link assumes: ``blockseg view CONFIG --port 8000``.
REPORT_VIEW_PORT = 8000


# -- what a run records ---------------------------------------------------------------


def stages_file(output_dir: Path) -> Path:
    """Where :func:`record_stages` keeps each stage's last timings."""
    return Path(output_dir) / "logs" / "stages.json"


def _roi_voxels(run: "Run") -> int:
    voxels = 1
    for length, size in zip(run.total_roi.shape, run.voxel_size):
        voxels *= int(length) // int(size)
    return voxels


def stage_record(report: "StageReport", roi_voxels: int) -> dict[str, Any]:
    """What ``stages.json`` keeps of one stage's run: blocks, seconds and the voxels they covered.

    The voxels are the ROI's share of the blocks this run did, so a resumed
    stage's rate counts only the blocks it ran.

    Examples
    --------
    >>> from blockseg.stage_errors import StageReport
    >>> record = stage_record(StageReport("fragments", total=4, skipped=2, succeeded=2, seconds=2.0), 4_000_000)
    >>> record["voxels"], record["seconds"]
    (2000000, 2.0)
    """
    share = report.succeeded / report.total if report.total else 0.0
    return {
        "total": report.total,
        "succeeded": report.succeeded,
        "skipped": report.skipped,
        "submitted": report.submitted,
        "failed": len(report.failures),
        "seconds": round(float(report.seconds), 3),
        "voxels": int(round(roi_voxels * share)),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def record_stages(run: "Run", failed: "StageReport | None" = None) -> Path | None:
    """Add the stages this run ran (and the one that failed) to ``logs/stages.json``.

    A stage whose blocks were all done before keeps the timings of the run
    that did them. Never raises: a run does not fail for want of its record.
    """
    path = stages_file(run.output_dir)
    try:
        records = json.loads(path.read_text()) if path.is_file() else {}
        roi_voxels = _roi_voxels(run)
        reports = dict(run.reports)
        if failed is not None:
            reports[failed.stage] = failed
        for name, report in reports.items():
            if report.succeeded == 0 and not report.failures and name in records:
                continue  # nothing ran this time: the earlier figures still describe the results
            records[name] = stage_record(report, roi_voxels)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=2))
        return path
    except Exception:  # noqa: BLE001 - only the report misses it; the run's outcome stands
        log.debug("could not record the stage timings in %s", path, exc_info=True)
        return None


# -- what the report shows ---------------------------------------------------------------


@dataclass
class StageRow:
    """One stage of the run as the report shows it."""

    name: str
    done: int
    total: int
    state: str
    failed: int
    seconds: float | None
    voxels: int | None

    @property
    def mvoxels_per_second(self) -> float | None:
        if not self.seconds or not self.voxels:
            return None
        return self.voxels / self.seconds / 1e6


def stage_rows(run: "Run") -> list[StageRow]:
    """Every enabled stage of ``run`` in order, with the ledger's counts and the recorded timings."""
    from blockseg.ledger import stage_progress
    from blockseg.registry import stages_of

    path = stages_file(run.output_dir)
    records = json.loads(path.read_text()) if path.is_file() else {}
    rows = []
    for name, stage in stages_of(run).items():
        if not stage.enabled(run):
            continue
        done, total, current = stage_progress(run, stage)
        failures = failed_blocks(run.output_dir, name)
        if not current and run.store.stage_state(name) is not None:
            state = "stale"
        elif failures:
            state = "failed"
        else:
            state = "complete" if current and done == total else ("partial" if current and done else "not started")
        record = records.get(name, {})
        rows.append(StageRow(name, done, total, state, len(failures), record.get("seconds"), record.get("voxels")))
    return rows


def failed_blocks(output_dir: Path, stage: str) -> list[dict]:
    """The blocks of ``stage`` that failed on every attempt in the last run (id, ROI, worker, traceback)."""
    path = Path(output_dir) / "logs" / f"failed-{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def scores_picture(output_dir: Path) -> tuple[bytes | None, str]:
    """``scores.png`` (drawn again if ``scores.json`` is newer) and a line on why there is none."""
    scores_json = Path(output_dir) / "scores.json"
    png = Path(output_dir) / "scores.png"
    if not scores_json.is_file():
        return None, "no scores: the run has no evaluate stage (input.ground_truth) or it has not run yet"
    if not png.is_file() or png.stat().st_mtime < scores_json.stat().st_mtime:
        from blockseg.plots import write_scores_png

        if write_scores_png(json.loads(scores_json.read_text()), output_dir) is None:
            return None, 'no picture of the scores: matplotlib is missing (pip install "blockseg[plots]")'
    return png.read_bytes(), ""


def view_lines(config: "PipelineConfig", config_path: Path, port: int = REPORT_VIEW_PORT) -> dict[str, str]:
    """The command that serves the outputs, the neuroglancer link it serves, and the napari command.

    The link is the one ``blockseg view CONFIG --port PORT`` prints: the
    neuroglancer client and the data both on 127.0.0.1. Empty values (and
    a ``note``) when there is nothing to show yet.
    """
    from blockseg.view import find_layers, napari_command, neuroglancer_link, neuroglancer_state
    from blockseg.view_links import local_viewer_url
    from blockseg.volume import VolumeError

    try:
        layers, _ = find_layers(config)
    except VolumeError as error:
        return {"command": "", "link": "", "napari": "", "note": str(error)}
    base_url = f"http://127.0.0.1:{port}"
    return {
        "command": f"blockseg view {Path(config_path).resolve()} --port {port}",  # runs from any folder
        "link": neuroglancer_link(neuroglancer_state(layers, base_url), local_viewer_url(base_url)),
        "napari": napari_command(layers),
        "note": "",
    }


# -- the page ---------------------------------------------------------------------------


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; } th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td, tr.stale td { background: #fde8e8; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
img { max-width: 100%; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _stages_table(rows: list[StageRow]) -> str:
    lines = [
        "<table>",
        "<tr><th>stage</th><th>blocks done</th><th>failed</th><th>seconds</th><th>Mvoxel/s</th><th>state</th></tr>",
    ]
    for row in rows:
        lines.append(
            f'<tr class="{_e(row.state)}" id="stage-{_e(row.name)}"><td>{_e(row.name)}</td>'
            f'<td class="n">{row.done} / {row.total}</td><td class="n">{row.failed}</td>'
            f'<td class="n">{_number(row.seconds, 1)}</td><td class="n">{_number(row.mvoxels_per_second, 2)}</td>'
            f"<td>{_e(row.state)}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _failures_section(output_dir: Path, rows: list[StageRow]) -> str:
    parts = []
    for row in rows:
        for failure in failed_blocks(output_dir, row.name):
            trace = str(failure.get("traceback", "")).rstrip()
            reason = trace.splitlines()[-1] if trace else "(no traceback)"
            parts.append(
                f"<h3>{_e(row.name)}: block {_e(failure.get('block_id'))}</h3>\n"
                f"<p>write ROI {_e(failure.get('roi'))}, {_e(failure.get('attempts'))} attempt(s), "
                f"last on {_e(failure.get('worker'))}: <strong>{_e(reason)}</strong></p>\n"
                f"<details><summary>traceback</summary><pre>{_e(trace)}</pre></details>"
            )
    return "\n".join(parts) if parts else "<p>No block failed.</p>"


def _scores_section(output_dir: Path) -> str:
    picture, why = scores_picture(output_dir)
    if picture is None:
        return f"<p>{_e(why)}</p>"
    scores = json.loads((Path(output_dir) / "scores.json").read_text())
    best = scores.get("best") or {}
    line = ""
    if "threshold" in best:
        line = f"<p>Best threshold {_e(best['threshold'])}: VOI sum {_number(best.get('voi_sum'), 4)}</p>\n"
    data = base64.b64encode(picture).decode("ascii")
    return (
        f'{line}<img id="scores" src="data:image/png;base64,{data}" '
        f'alt="VOI split and merge against the threshold, and the split/merge trade-off">'
    )


def _view_section(view: dict[str, str]) -> str:
    if not view["link"]:
        return f"<p>Nothing to view yet: {_e(view['note'])}</p>"
    return (
        f"<p>Serve the outputs and the neuroglancer client on 127.0.0.1 (no internet needed):</p>\n"
        f"<pre>{_e(view['command'])}</pre>\n"
        f'<p>then open <a id="neuroglancer" href="{_e(view["link"])}">the outputs in neuroglancer</a> '
        f"(this link works while that command runs).</p>\n"
        f"<p>napari reads the files directly:</p>\n<pre>{_e(view['napari'])}</pre>"
    )


def report_html(
    config: "PipelineConfig", config_path: Path, rows: list[StageRow], view: dict[str, str]
) -> str:
    """The whole page, as text: no script, no external resource, images inline."""
    output_dir = config.output_dir
    config_text = Path(config_path).read_text() if Path(config_path).is_file() else "(the config file is gone)"
    done = sum(1 for row in rows if row.state == "complete")
    body = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>blockseg report: {_e(output_dir.name)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>blockseg report: {_e(output_dir)}</h1>",
        f"<p>Config {_e(Path(config_path).resolve())}; graph store {_e(config.graph_url)}; "
        f"{done} of {len(rows)} stage(s) complete; written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        '<h2 id="stages">Stages</h2>',
        _stages_table(rows),
        '<h2 id="failures">Failed blocks</h2>',
        _failures_section(output_dir, rows),
        '<h2 id="scores-section">Scores</h2>',
        _scores_section(output_dir),
        '<h2 id="view">Look at the outputs</h2>',
        _view_section(view),
        '<h2 id="config">Config</h2>',
        f"<pre>{_e(config_text)}</pre>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(body)


def write_report(config: "PipelineConfig", config_path: str | Path) -> Path:
    """Write ``OUTPUT/report.html`` for the run of ``config`` (read from ``config_path``); return its path.

    Raises
    ------
    ConfigError
        If the run has not started (no output folder): there is nothing to report.
    """
    from blockseg.config import ConfigError
    from blockseg.inputs import open_run
    from blockseg.stage_errors import naming

    output_dir = config.output_dir
    if not output_dir.is_dir():
        raise ConfigError(f"report: {output_dir} does not exist yet; run the pipeline first (blockseg run CONFIG)")
    run = open_run(config)
    try:
        rows = stage_rows(run)
    finally:
        run.store.close()
    page = report_html(config, Path(config_path), rows, view_lines(config, Path(config_path)))
    path = output_dir / "report.html"
    with naming(path):  # a full disk fails the write, which names no file
        path.write_text(page, encoding="utf-8")
    return path
