"""The demo: a synthetic EM-like volume and the embedded default pipeline on it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from blockseg.geometry import Roi
from blockseg.volume import create_volume

DEMO_SHAPE = (64, 192, 192)
DEMO_VOXEL_SIZE = (20, 10, 10)


def demo_config_text() -> str:
    """The embedded default config (``configs/demo.yaml``)."""
    return resources.files("blockseg.configs").joinpath("demo.yaml").read_text()


def write_demo_inputs(
    folder: Path, shape: Sequence[int] = DEMO_SHAPE, voxel_size: Sequence[int] = DEMO_VOXEL_SIZE, seed: int = 0,
    noise: float = 0.1,
) -> str:
    """Write raw, ground truth and affinities to ``folder/input.zarr``; return the container path."""
    from blockseg.synthetic import make_demo_volume

    data = make_demo_volume(shape=tuple(shape), voxel_size=tuple(voxel_size), seed=seed, noise=noise)
    container = folder / "input.zarr"
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(shape, voxel_size)))
    chunks = tuple(min(s, 64) for s in shape)
    for name, array, channels in (
        ("raw", data["raw"], ()),
        ("labels", data["labels"], ()),
        ("affinities", data["affinities"], (3,)),
    ):
        volume = create_volume(f"{container}/{name}", roi, voxel_size, array.dtype, chunks, channels)
        volume.write(roi, array)
    return str(container)


def write_demo_config(folder: Path, overrides: dict | None = None) -> Path:
    """Write the demo config into ``folder`` (its paths are relative to it)."""
    config = yaml.safe_load(demo_config_text())
    for key, value in (overrides or {}).items():
        target = config
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
