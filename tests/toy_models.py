"""Small models for the predict stage, importable as ``python:toy_models:NAME``.

numpy only, so the tests need no deep-learning framework. Each takes a float32
batch (B, 1, z, y, x) and returns (B, C, z - 2, y - 2, x - 2): a valid 3x3x3
neighbourhood, so blocks need one voxel of context.
"""

from __future__ import annotations

import numpy as np


def _box_mean(batch: np.ndarray) -> np.ndarray:
    z, y, x = batch.shape[-3:]
    total = np.zeros(batch.shape[:-3] + (z - 2, y - 2, x - 2), np.float64)
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                total += batch[..., dz : dz + z - 2, dy : dy + y - 2, dx : dx + x - 2]
    return (total / 27).astype(np.float32)


def membrane_affinities(batch: np.ndarray) -> np.ndarray:
    """Bright means inside a cell: three affinity channels from a smoothed raw, in [0, 1]."""
    mean = _box_mean(batch[:, :1])
    affinity = np.clip((mean - 0.35) / 0.2, 0, 1)
    centre = batch[:, :1, 1:-1, 1:-1, 1:-1]
    # the channels differ a little, so a channel mix-up shows
    return np.concatenate([affinity, affinity * 0.99, np.clip(affinity + 0.01 * centre, 0, 1)], axis=1)


def wrong_shape(batch: np.ndarray) -> np.ndarray:
    """Forgets to crop: output as large as the input."""
    return np.repeat(batch[:, :1], 3, axis=1)


def dies_on_the_probe(batch: np.ndarray) -> np.ndarray:
    """:func:`membrane_affinities`, but the process exits on the all-zero window the stage probes with.

    It stands for a worker lost while the model is being tried (its memory
    limit, a lost node) that comes back and runs the blocks.
    """
    if batch.shape[0] == 1 and not batch.any():
        import os

        os._exit(1)
    return membrane_affinities(batch)
