"""Check 5: the pipeline on real FIB-SEM ground truth (FlyEM medulla, 250^3 at 10 nm)."""

from __future__ import annotations

import pytest

from blockseg.config import load_config
from blockseg.pipeline import open_run, run_pipeline
from helpers import FLYEM, write_flyem_inputs, write_config


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
    inputs, voxel_size, labels = write_flyem_inputs(tmp_path)

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
