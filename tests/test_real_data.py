"""Check 5: the pipeline on real FIB-SEM ground truth (FlyEM medulla, 250^3 at 10 nm)."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.config import load_config
from blockseg.geometry import Roi
from blockseg.pipeline import open_run, run_pipeline
from blockseg.synthetic import affinities_from_labels
from blockseg.volume import create_volume
from helpers import SHARED_DATA, write_config

FLYEM = SHARED_DATA / "flyem_medulla_250.npz"

# The bound, and why: the affinities are the ground truth's own boundaries as a
# network would predict them (low on a 2-voxel membrane band, noise 0.1, blur
# 1 voxel), so every error is the pipeline's. The band swallows processes only
# a few voxels thin, which the volume has many of (median object: 24 voxels),
# and those come back split or merged: at the best threshold we measured
# VOI 0.96 (split 0.37 + merge 0.58) with 64 x 128 x 128 blocks. 1.2 leaves
# room for noise in that figure while staying far below the 2.74 of the
# watershed over-segmentation shipped with the data (its README), so a
# pipeline that loses seams or mislabels blocks fails it.
VOI_BOUND = 1.2


@pytest.mark.skipif(not FLYEM.exists(), reason=f"real data missing: {FLYEM} (see ../shared/data/README.md)")
def test_flyem_medulla_segmentation_scores(tmp_path, client):
    data = np.load(FLYEM)
    labels = data["labels"].astype(np.uint64)
    voxel_size = tuple(int(v) for v in data["voxel_size"])
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(labels.shape, voxel_size)))
    affinities = affinities_from_labels(labels, noise=0.1, seed=0, membrane_width=2)
    inputs = tmp_path / "flyem.zarr"
    create_volume(f"{inputs}/affinities", roi, voxel_size, np.float32, (64, 64, 64), (3,)).write(roi, affinities)
    create_volume(f"{inputs}/labels", roi, voxel_size, np.uint64, (64, 64, 64)).write(roi, labels)

    config = load_config(write_config(tmp_path, inputs, block_voxels=(64, 128, 128), voxel_size=voxel_size))
    run = open_run(config)
    reports = run_pipeline(run, client)
    run.store.close()
    assert reports["fragments"].total == 4 * 2 * 2
    best = run.scores["best"]
    assert best["voi_sum"] < VOI_BOUND, best
    # fragments must over-segment (split, hardly merge), and agglomeration must help
    fragments = run.scores["fragments"]
    assert fragments["voi_merge"] < 0.5
    assert best["voi_sum"] < fragments["voi_sum"] / 2
