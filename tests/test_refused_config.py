"""Issue 17: a refused config leaves the file system as it was, and the graph store follows ``output``.

Each refused config runs in a fresh folder that holds only its YAML (and,
for the bad-values case, its bad input); the tree of that folder, and of
the shared inputs, is the same after ``blockseg run`` as before it: no empty
output folder, no store file, no log folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from blockseg.config import load_config
from blockseg.demo import write_demo_config
from blockseg.volume import create_volume, open_volume
from helpers import write_config


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _tree(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` with its size (folders: -1)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size if path.is_file() else -1)
        for path in sorted(folder.rglob("*"))
    }


def _nan_affinities(folder: Path, small_inputs: Path) -> str:
    """A copy of the affinities with one NaN: refused by the input check, which runs on the cluster."""
    source = open_volume(f"{small_inputs}/affinities")
    data = source.read(source.roi)
    data[0, 3, 5, 7] = np.nan
    url = f"{folder / 'bad.zarr'}/affinities"
    volume = create_volume(url, source.roi, source.voxel_size, data.dtype, source.spatial_shape, data.shape[:-3])
    volume.write(volume.roi, data)
    return url


REFUSED = {
    "bad graph URL": ({"graph": "bogus://somewhere/graph.db"}, "unknown scheme bogus://"),
    "unknown key": ({"stages__fragments__min_seed_distanse": 50}, "min_seed_distanse: unknown key"),
    "missing input": ({"input__affinities": "missing.zarr/affinities"}, "missing.zarr"),
    "store in a new folder elsewhere, missing input": (
        {"graph": "sqlite:///elsewhere/deeper/graph.db", "input__affinities": "missing.zarr/affinities"},
        "missing.zarr",
    ),
    "output nested in new folders, unaligned blocks": (
        {"output": "a/b/out", "block_shape": [640, 645, 640]}, "block_shape",
    ),
    "NaN affinities (refused on the cluster)": (None, "NaN"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_config_writes_nothing(case, tmp_path, small_inputs):
    change, expected = REFUSED[case]
    if change is None:
        change = {"input__affinities": _nan_affinities(tmp_path, small_inputs)}
    config = write_config(tmp_path, small_inputs, cluster={"local": {"workers": 1, "dashboard": False}}, **change)
    before, inputs_before = _tree(tmp_path), _tree(small_inputs)
    result = _cli("run", str(config), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert _tree(tmp_path) == before, f"{case}: left {sorted(set(_tree(tmp_path)) - set(before))}"
    assert _tree(small_inputs) == inputs_before


def test_read_only_commands_on_a_run_never_started_write_nothing(tmp_path, small_inputs):
    config = write_config(tmp_path, small_inputs)
    before = _tree(tmp_path)
    status = _cli("status", str(config), cwd=tmp_path)
    assert status.returncode == 0 and "not started" in status.stdout, status.stderr
    report = _cli("report", str(config), cwd=tmp_path)
    assert report.returncode == 2 and "run the pipeline first" in report.stderr
    assert _tree(tmp_path) == before


def test_graph_store_follows_output(tmp_path):
    """A copy of the demo config with another output gets its own store, inside that output."""
    (tmp_path / "first").mkdir()
    first = write_demo_config(tmp_path / "first")
    assert "graph" not in yaml.safe_load(first.read_text())
    assert load_config(first).graph_url == f"sqlite:///{tmp_path / 'first' / 'output' / 'graph.db'}"
    moved = tmp_path / "first" / "other.yaml"
    data = yaml.safe_load(first.read_text())
    data["output"] = "elsewhere/output2"
    moved.write_text(yaml.safe_dump(data))
    assert load_config(moved).graph_url == f"sqlite:///{tmp_path / 'first' / 'elsewhere' / 'output2' / 'graph.db'}"
    # a config that names a store keeps it
    data["graph"] = "file://stores/graph"
    moved.write_text(yaml.safe_dump(data))
    assert load_config(moved).graph_url == f"file://{tmp_path / 'first' / 'stores' / 'graph'}"


def test_run_names_the_store_in_its_first_lines(tmp_path, small_inputs):
    config = write_config(
        tmp_path, small_inputs, cluster={"local": {"workers": 1, "dashboard": False}}, stages__relabel__thresholds=[0.5],
    )
    result = _cli("run", str(config), "--stages", "check,fragments", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert f"graph store sqlite:///{tmp_path / 'out' / 'graph.db'}" in first, result.stdout
    assert "inside the output folder" in first
    assert (tmp_path / "out" / "graph.db").is_file()
