"""Helpers the tests share (imported as ``helpers``; tests/ is on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage as ndi

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



def voronoi_cells(shape: tuple[int, ...], n_seeds: int, radius: float, seed: int) -> np.ndarray:
    """Voronoi cells of random seeds cut at `radius`: touching cells and background."""
    rng = np.random.default_rng(seed)
    coords = tuple(rng.integers(0, n, n_seeds) for n in shape)
    markers = np.zeros(shape, np.int64)
    markers[coords] = np.arange(1, n_seeds + 1)
    distance, nearest = ndi.distance_transform_edt(markers == 0, return_indices=True)
    labels = markers[tuple(nearest)]
    labels[distance > radius] = 0
    return labels
