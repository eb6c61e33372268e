"""Check 6: bad input is a one-line error before any block runs, outputs untouched."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from blockseg.geometry import Roi
from blockseg.volume import create_volume, open_volume
from helpers import write_config


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _tree_digest(folder: Path) -> str:
    """Every output file's bytes, and the graph store's rows (wherever SQLite keeps them)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == "blockseg.log" or path.name.startswith("graph.db"):
            continue
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    with sqlite3.connect(folder / "graph.db") as connection:
        for line in connection.iterdump():
            digest.update(line.encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_inputs):
    """A finished run whose outputs every bad rerun must leave alone."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, small_inputs, cluster={"local": {"workers": 1, "dashboard": False}})
    result = _cli("run", str(config), cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def _copy_volume(source_url: str, target_url: str, data=None, dtype=None, voxel_size=None):
    source = open_volume(source_url)
    array = source.read(source.roi) if data is None else data
    volume = create_volume(
        target_url, source.roi if voxel_size is None else Roi(source.offset, tuple(s * v for s, v in zip(source.spatial_shape, voxel_size))),
        voxel_size or source.voxel_size, dtype or array.dtype, source.spatial_shape, array.shape[:-3],
    )
    volume.write(volume.roi, array.astype(dtype or array.dtype))
    return volume


def _bad_inputs(kind: str, folder: Path, small_inputs: Path) -> dict:
    """Config changes (dotted keys) that make input bad in the named way."""
    bad = folder / "bad.zarr"
    affs_url = f"{small_inputs}/affinities"
    if kind == "missing dataset":
        return {"input": {"affinities": f"{small_inputs}/no_such_dataset"}}
    if kind == "nan affinities":
        data = open_volume(affs_url).read(open_volume(affs_url).roi)
        data[1, 20, 100, 7] = np.nan
        _copy_volume(affs_url, f"{bad}/affs", data)
        # another input needs another graph store (the finished one refuses
        # it); the check must stop the run before it writes any volume there
        return {"input": {"affinities": f"{bad}/affs"}, "output": "out_nan"}
    if kind == "labels as affinities":
        _copy_volume(f"{small_inputs}/labels", f"{bad}/labels_as_affs")
        return {"input": {"affinities": f"{bad}/labels_as_affs"}}
    if kind == "two integer channels":
        data = (open_volume(affs_url).read(open_volume(affs_url).roi)[:2] * 255).astype(np.uint8)
        _copy_volume(affs_url, f"{bad}/two", data, dtype=np.uint8)
        return {"input": {"affinities": f"{bad}/two"}}
    if kind == "unaligned block":
        return {"block_shape": [640, 645, 640]}  # 64.5 voxels
    if kind == "unaligned chunks":
        return {"stages": {"fragments": {"chunk_shape": [32, 48, 64]}}}
    if kind == "voxel size mismatch":
        labels = open_volume(f"{small_inputs}/labels")
        _copy_volume(f"{small_inputs}/labels", f"{bad}/labels_40nm", voxel_size=(40, 10, 10))
        return {"input": {"ground_truth": f"{bad}/labels_40nm"}}
    if kind == "unknown graph scheme":
        return {"graph": "postgres://localhost/graph"}
    if kind == "graph store of another grid":
        return {"block_shape": [320, 640, 640]}
    if kind == "unwritable graph store":
        blocker = folder / "a_file"
        blocker.write_text("")
        return {"graph": f"sqlite:///{blocker}/graph.db"}
    if kind == "unknown key":
        return {"stages": {"fragments": {"min_seed_distanse": 50}}}
    raise AssertionError(kind)


EXPECTED = {
    "missing dataset": "input.affinities",
    "nan affinities": "NaN",
    "labels as affinities": "input.affinities",
    "two integer channels": "channel",
    "unaligned block": "block_shape",
    "unaligned chunks": "chunk_shape",
    "voxel size mismatch": "voxel_size",
    "unknown graph scheme": "unknown scheme postgres://",
    "graph store of another grid": "holds a run with another block_shape",
    "unwritable graph store": "cannot create its folder",
    "unknown key": "stages.fragments.min_seed_distanse: unknown key",
}


def _merge(base: dict, change: dict) -> dict:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_bad_input_is_one_line_and_changes_nothing(kind, finished, small_inputs, tmp_path):
    config_path = finished / "config.yaml"
    original = config_path.read_text()
    before = _tree_digest(finished / "out")
    config = _merge(yaml.safe_load(original), _bad_inputs(kind, tmp_path, small_inputs))
    bad_path = finished / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(config))
    try:
        result = _cli("run", str(bad_path), cwd=finished)
    finally:
        bad_path.unlink()
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert EXPECTED[kind] in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert _tree_digest(finished / "out") == before
    assert not (finished / "out_nan" / "volumes.zarr").exists()
