"""``benchmarks/scheduler.py --quick`` runs to the end and prints its figures for every store.

The benchmark drives ``run_stage`` directly, outside the pipeline, so it
broke unnoticed when worker commits began to carry the stage's token (the
stale-commit fence): it never registered that token, and every block of its
file-store run was refused. It runs here in a subprocess (about 1.5 minutes
on 2 cores), as a user would run it, with ``TMPDIR`` and the working
directory in the test's temporary folder, so everything it writes (stores,
the no-op module, dask's scratch space) lands there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "scheduler.py"
#: The runs of ``--quick`` (SQLite at 10^3 and 10^4 blocks, the file store at 10^3): (store, blocks) -> figures' suffix.
QUICK_RUNS = {("sqlite", 1000): "1e3", ("sqlite", 10000): "1e4", ("file", 1000): "file_1e3"}
#: A row of the benchmark's table: store, blocks, seconds, blocks/s, rerun seconds, blocks resubmitted.
ROW = re.compile(r"^(sqlite|file)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s", re.MULTILINE)


def _run_quick(tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``benchmarks/scheduler.py --quick`` in ``tmp_path``.

    Parameters
    ----------
    tmp_path : Path
        The working directory; ``tmp_path / "tmp"`` becomes its ``TMPDIR``.

    Returns
    -------
    subprocess.CompletedProcess
        Its exit code, stdout and stderr.
    dict
        The figures it wrote with ``--json`` (empty if it wrote none).
    """
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    figures = tmp_path / "figures.json"
    env = {**os.environ, "TMPDIR": str(scratch)}
    # --timeout bounds each measurement, the subprocess timeout the whole run: a hang fails, never blocks
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--timeout", "300", "--json", str(figures)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=720,
    )
    return done, json.loads(figures.read_text()) if figures.exists() else {}


def test_quick_benchmark_prints_figures_for_every_store(tmp_path: Path) -> None:
    """Exit 0, a table row and figures for each store and size, and no block submitted again."""
    done, figures = _run_quick(tmp_path)
    # the stale-commit fence refusing the file store's blocks showed here as exit 1 and no figures
    assert "StaleCommit" not in done.stdout + done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    rows = {(store, int(blocks)): (float(rate), int(resubmitted))
            for store, blocks, _, rate, _, resubmitted in ROW.findall(done.stdout)}
    assert set(rows) == set(QUICK_RUNS), done.stdout
    for (store, blocks), (rate, resubmitted) in rows.items():
        assert rate > 0, (store, blocks, done.stdout)
        # the second run submits nothing only if every block's commit (by the workers, for files) landed
        assert resubmitted == 0, (store, blocks, done.stdout)

    for suffix in QUICK_RUNS.values():
        assert figures[f"noop_blocks_per_s_{suffix}"] > 0, figures
        assert figures[f"rerun_submitted_{suffix}"] == 0, figures
    assert figures["noop_blocks_per_s"] == figures["noop_blocks_per_s_1e4"]  # the largest SQLite run
    assert figures["commit_block_us_sqlite"] > 0 and figures["commit_block_us_file"] > 0
    # the 10^6-block ledger: resuming from it submits nothing
    assert figures["ledger_1e6_rerun_submitted"] == 0
    assert re.search(r"run_stage resuming with all done: [\d.]+ s, 0 submitted, 1000000 skipped", done.stdout)

    # it wrote in its own temporary folder only, and removed it
    assert not list((tmp_path / "tmp").glob("blockseg-bench-scheduler-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.json", "tmp"]
