"""Helpers the tests share (imported as ``helpers``; tests/ is on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_config(folder: Path, inputs: Path, block_voxels=(32, 64, 64), voxel_size=(20, 10, 10), **sections) -> Path:
    """A pipeline YAML in ``folder`` reading ``inputs`` (an ``input.zarr``) and writing ``folder/out``."""
    config = {
        "input": {"affinities": f"{inputs}/affinities", "ground_truth": f"{inputs}/labels"},
        "output": "out",
        "block_shape": [b * v for b, v in zip(block_voxels, voxel_size)],
        "stages": {"relabel": {"thresholds": [0.5]}},
        "scheduler": {"progress": False},
    }
    for key, value in sections.items():
        target = config
        parts = key.split("__")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_dataset(url) -> np.ndarray:
    from blockseg.volume import open_volume

    volume = open_volume(url)
    return volume.read(volume.roi)


