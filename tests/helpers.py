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


FLYEM = SHARED_DATA / "flyem_medulla_250.npz"


def write_flyem_inputs(folder: Path) -> tuple[Path, tuple[int, ...], np.ndarray]:
    """FlyEM medulla's labels and affinities made from them (noise 0.1) as ``folder/flyem.zarr``.

    Returns the container, the voxel size and the labels.
    """
    from blockseg.geometry import Roi
    from blockseg.synthetic import affinities_from_labels
    from blockseg.volume import create_volume

    data = np.load(FLYEM)
    labels = data["labels"].astype(np.uint64)
    voxel_size = tuple(int(v) for v in data["voxel_size"])
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(labels.shape, voxel_size)))
    affinities = affinities_from_labels(labels, noise=0.1, seed=0, membrane_width=2)
    inputs = folder / "flyem.zarr"
    create_volume(f"{inputs}/affinities", roi, voxel_size, np.float32, (64, 64, 64), (3,)).write(roi, affinities)
    create_volume(f"{inputs}/labels", roi, voxel_size, np.uint64, (64, 64, 64)).write(roi, labels)
    return inputs, voxel_size, labels
