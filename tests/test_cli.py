"""The command line: demo (check 1), status, evaluate, help, a stdout closed early."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_demo_status_and_evaluate(tmp_path):
    demo = _cli("demo", str(tmp_path / "demo"), "--no-progress", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    best = re.search(r"best threshold ([0-9.]+): VOI sum ([0-9.]+)", demo.stdout)
    assert best, demo.stdout
    assert float(best.group(2)) < 0.5
    # the fragments settings the config leaves out, as the data chose them, said once
    assert demo.stdout.count("fragments, chosen from the input and its voxel size (20 x 10 x 10 nm): "
                             "method affinity_watershed, smooth_sigma 5 nm, min_seed_distance 100 nm, "
                             "fragments_in_xy false") == 1, demo.stdout
    # one row per threshold of the embedded config, plus the fragments row
    rows = [line for line in demo.stdout.splitlines() if re.match(r"\s+0\.\d\s", line)]
    assert len(rows) == 9
    scores = json.loads((tmp_path / "demo" / "output" / "scores.json").read_text())
    assert scores["best"]["voi_sum"] == min(s["voi_sum"] for s in scores["thresholds"].values())
    assert (tmp_path / "demo" / "output" / "volumes.zarr" / "segmentation" / "threshold_0.4" / "zarr.json").exists()
    assert (tmp_path / "demo" / "output" / "logs" / "blockseg.log").stat().st_size > 0

    status = _cli("status", str(tmp_path / "demo" / "demo.yaml"), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert lines["fragments"][1:4] == ["18", "18", "complete"]
    assert lines["segments"][1:4] == ["1", "1", "complete"]

    config = str(tmp_path / "demo" / "demo.yaml")
    graphml = tmp_path / "piece.graphml"
    export = _cli("graph", "export", config, "--roi", "0", "0", "0", "640", "640", "640", "-o", str(graphml), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    import networkx as nx
    import numpy as np

    piece = nx.read_graphml(graphml)
    centred = [n for n, d in piece.nodes(data=True) if "z" in d]
    assert centred and all(0 <= piece.nodes[n]["z"] < 640 and 0 <= piece.nodes[n]["x"] < 640 for n in centred)
    assert all("merge_score" in d for _, _, d in piece.edges(data=True))
    everything = tmp_path / "all.npz"
    export = _cli("graph", "export", config, "--format", "npz", "-o", str(everything), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    with np.load(everything, allow_pickle=False) as arrays:
        assert len(arrays["node_ids"]) > len(centred)
        assert len(arrays["edge_u"]) == len(arrays["edge_scores"]) > piece.number_of_edges()
        assert np.all(arrays["edge_u"] < arrays["edge_v"])
        assert "node_mean_affinity" in arrays.files

    evaluate = _cli("evaluate", str(tmp_path / "demo" / "demo.yaml"), "--no-progress", cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    assert f"VOI sum {best.group(2)}" in evaluate.stdout
    assert "evaluate: 0 block(s) done, 18 already done, 0 submitted" in evaluate.stdout


def test_status_of_a_fresh_config(tmp_path, small_inputs):
    from helpers import write_config

    config = write_config(tmp_path, small_inputs)
    status = _cli("status", str(config), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "fragments" in status.stdout and "not started" in status.stdout


def test_every_command_has_help(tmp_path):
    for command in ("run", "status", "evaluate", "demo"):
        result = _cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0
        assert "usage: blockseg " + command in result.stdout


def test_missing_config_is_one_line(tmp_path):
    result = _cli("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nope.yaml: no such file" in result.stderr


def _blockseg_into(reader: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``blockseg ARGS | READER`` in bash; the pipeline's stdout, and blockseg's stderr and exit code."""
    script = f'"$@" 2>"$BLOCKSEG_STDERR" | {reader}; exit "${{PIPESTATUS[0]}}"'
    stderr_file = cwd / "blockseg.stderr"
    result = subprocess.run(
        ["bash", "-c", script, "bash", sys.executable, "-m", "blockseg.cli", *args], cwd=cwd,
        capture_output=True, text=True, timeout=300, env={**os.environ, "BLOCKSEG_STDERR": str(stderr_file)},
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, stderr_file.read_text())


def test_status_piped_into_head_ends_quietly(tmp_path, small_inputs):
    from blockseg.cli import STDOUT_CLOSED
    from helpers import write_config

    config = write_config(tmp_path, small_inputs)
    piped = _blockseg_into("head -1", "status", str(config), cwd=tmp_path)
    assert piped.stdout.splitlines() == [piped.stdout.strip("\n")] and piped.stdout.split()[:3] == [
        "stage", "done", "total"], piped.stdout
    # nothing on stderr: no BrokenPipeError traceback, no "Exception ignored" from the final flush
    assert piped.stderr == "", piped.stderr
    # head may have read every line before it left (then status never met the closed pipe)
    assert piped.returncode in (0, STDOUT_CLOSED), piped.returncode
    # a status query leaves nothing behind, closed pipe or not
    assert not (tmp_path / "out").exists()


def test_every_printing_command_ends_quietly_when_its_reader_is_gone(tmp_path, small_inputs):
    from blockseg.cli import STDOUT_CLOSED
    from helpers import write_config

    config = write_config(tmp_path, small_inputs, cluster={"local": {"workers": 1}})
    # `true` leaves before blockseg has written a byte: its first write, whichever, meets a closed pipe
    for args in (["status", str(config)], ["tasks"], ["run", str(config), "--no-progress"],
                 ["evaluate", str(config), "--no-progress"]):
        piped = _blockseg_into("true", *args, cwd=tmp_path)
        assert piped.returncode == STDOUT_CLOSED, (args, piped.returncode, piped.stderr)
        assert piped.stderr == "", (args, piped.stderr)  # neither a traceback nor "--- Logging error ---"
    # the run stopped where its narrative met the closed pipe, lock released: the rerun goes on from there
    rerun = _cli("run", str(config), "--no-progress", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(r"relabel: [1-9]\d* block\(s\) done, 0 already done", rerun.stdout), rerun.stdout
