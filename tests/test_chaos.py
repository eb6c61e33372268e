"""The kill campaign, small: benchmarks/chaos.py kills the demo pipeline at random moments, resumes it and compares.

Each store gets 3 runs on the quick volume, their kills aimed at other
phases (one of each kill kind per store: SIGKILL of the driver, of a worker,
SIGTERM of the driver); every resumed run must equal the undisturbed one bit
for bit, and none may hang. ``python benchmarks/chaos.py --runs 20`` is the
full campaign.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"


def _chaos():
    spec = importlib.util.spec_from_file_location("blockseg_chaos_benchmark", CHAOS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize(
    "store, targets",
    [("sqlite", "segments,relabel,evaluate"), ("file", "fragments,agglomerate,segments")],
)
def test_killed_runs_resume_to_the_undisturbed_result(tmp_path, store, targets):
    chaos = _chaos()
    figures = tmp_path / "chaos.json"
    code = chaos.main([
        "--runs", "3", "--quick", "--store", store, "--targets", targets, "--bound", "240",
        "--workdir", str(tmp_path / "runs"), "--json", str(figures),
    ])
    result = json.loads(figures.read_text())
    problems = [d for d in result["details"] if d["mismatch"] or d["hang"]]
    assert result["runs"] == 3
    assert result["mismatches"] == 0, problems
    assert result["hangs"] == 0, problems
    assert code == 0
    # every kind of kill was tried; a kill can only miss if the run ended before it
    assert sorted(d["kind"] for d in result["details"]) == sorted(chaos.KINDS)
    assert result["kills_total"] >= 2, result["details"]
    assert sum(result["kills"].values()) == result["kills_total"]
