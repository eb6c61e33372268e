"""Check 3: the downsample stage's OME-Zarr pyramids, read back with ome-zarr's own reader."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from skimage.measure import block_reduce

from blockseg.config import ConfigError, load_config
from blockseg.geometry import Roi
from blockseg.pipeline import open_run, run_pipeline
from blockseg.volume import open_volume
from helpers import write_config
from workers.downsample import pyramid

VOXEL = (20, 10, 10)
# a ROI that starts off the origin and whose shape is no multiple of the
# coarsest factor, so the far blocks end in partial windows
ROI_OFFSET = (20, 80, 40)
ROI_VOXELS = (30, 120, 100)
FACTORS = [(1, 2, 2), (2, 2, 2), (2, 2, 2)]  # what levels: 3 picks for 20 x 10 x 10 nm
TOTALS = [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_inputs, client):
    folder = tmp_path_factory.mktemp("pyramid")
    path = write_config(
        folder, small_inputs, block_voxels=(16, 64, 64),
        input__raw=f"{small_inputs}/raw",
        roi={"offset": list(ROI_OFFSET), "shape": [s * v for s, v in zip(ROI_VOXELS, VOXEL)]},
        stages__downsample={"levels": 3, "datasets": ["raw", "affinities", "fragments", "segmentation", "ground_truth"]},
    )
    config = load_config(path)
    run = open_run(config)
    try:
        reports = run_pipeline(run, client)
    finally:
        run.store.close()
    return config, reports


def _source(config, name):
    """Level 0 of ``name`` over the run's ROI."""
    if name in ("raw", "affinities", "ground_truth"):
        url = config.resolve(getattr(config.input, name))
    else:
        url = str(config.output_dir / "volumes.zarr" / name)
    return open_volume(url).read(Roi(ROI_OFFSET, [s * v for s, v in zip(ROI_VOXELS, VOXEL)]))


NAMES = ["raw", "affinities", "fragments", "segmentation/threshold_0.5", "ground_truth"]


@pytest.mark.parametrize("name", NAMES)
def test_ome_zarr_reader_sees_every_level(finished, name):
    config, reports = finished
    assert reports["downsample"].total == 2 * 2 * 2
    group = config.output_dir / "volumes.zarr" / "pyramids" / name
    nodes = list(Reader(parse_url(str(group)))())
    node = nodes[0]
    channels = 1 if name == "affinities" else 0
    assert len(node.data) == 4
    transforms = node.metadata["coordinateTransformations"]
    for level, (data, total, transform) in enumerate(zip(node.data, TOTALS, transforms)):
        shape = tuple(-(-s // f) for s, f in zip(ROI_VOXELS, total))
        assert data.shape[channels:] == shape, (level, data.shape)
        scale = [t for t in transform if t["type"] == "scale"][0]["scale"]
        translation = [t for t in transform if t["type"] == "translation"][0]["translation"]
        assert scale[channels:] == [v * f for v, f in zip(VOXEL, total)]
        # the world position of the centre of the level's first voxel
        assert translation[channels:] == [o + v * f / 2 for o, v, f in zip(ROI_OFFSET, VOXEL, total)]
    # hand-computed for level 2 (factor 2 x 4 x 4): centre of voxel 0 at offset + (20, 20, 20)
    assert transforms[2][1]["translation"][channels:] == [40.0, 100.0, 60.0]
    axes = [axis["name"] for axis in node.metadata["axes"]]
    assert axes[channels:] == ["z", "y", "x"]
    is_label = name not in ("raw", "affinities")
    assert bool(node.load(Label)) == is_label


@pytest.mark.parametrize("name", NAMES)
def test_blockwise_equals_whole_volume(finished, name):
    config, _ = finished
    level0 = _source(config, name)
    method = "mean" if name in ("raw", "affinities") else "mode"
    whole = pyramid(level0, FACTORS, method)
    group = Reader(parse_url(str(config.output_dir / "volumes.zarr" / "pyramids" / name)))
    data = list(group())[0].data
    for level, (expected, stored) in enumerate(zip(whole, data)):
        stored = np.asarray(stored)
        assert stored.dtype == level0.dtype
        assert np.array_equal(stored, expected), (name, level)


@pytest.mark.parametrize("name", ["fragments", "segmentation/threshold_0.5", "ground_truth"])
def test_label_levels_hold_no_new_label(finished, name):
    config, _ = finished
    data = list(Reader(parse_url(str(config.output_dir / "volumes.zarr" / "pyramids" / name)))())[0].data
    present = set(np.unique(np.asarray(data[0])).tolist())
    assert len(present) > 10
    for level in data[1:]:
        assert set(np.unique(np.asarray(level)).tolist()) <= present


def test_mean_level_against_block_reduce(finished):
    """An independent oracle for level 1 of the affinities, on the windows that are whole."""
    config, _ = finished
    level0 = _source(config, "affinities")
    data = list(Reader(parse_url(str(config.output_dir / "volumes.zarr" / "pyramids" / "affinities")))())[0].data
    expected = block_reduce(level0.astype(np.float64), (1, 1, 2, 2), np.mean)
    np.testing.assert_allclose(np.asarray(data[1]), expected, rtol=1e-6)


def test_second_run_skips_every_block(finished, client):
    config, _ = finished
    run = open_run(config)
    try:
        reports = run_pipeline(run, client, stages=["downsample"])
    finally:
        run.store.close()
    assert reports["downsample"].skipped == reports["downsample"].total == 8


def test_deleted_pyramid_is_written_again(finished, client):
    config, _ = finished
    group = config.output_dir / "volumes.zarr" / "pyramids" / "fragments"
    before = np.asarray(list(Reader(parse_url(str(group)))())[0].data[3])
    shutil.rmtree(group)
    run = open_run(config)
    try:
        reports = run_pipeline(run, client, stages=["downsample"])
    finally:
        run.store.close()
    assert reports["downsample"].succeeded == 8
    assert np.array_equal(np.asarray(list(Reader(parse_url(str(group)))())[0].data[3]), before)


@pytest.mark.parametrize(
    "block_voxels, downsample, message",
    [
        # 10 z voxels per block, and the coarsest level's z factor is 4
        ((10, 64, 64), {"levels": 3}, "not a multiple of the coarsest level's voxel size"),
        ((16, 64, 64), {"factor": [1, 2]}, "one value per axis"),
        ((16, 64, 64), {"datasets": ["raw"]}, r"\['raw'\] not in this run"),
        ((16, 64, 64), {"levels": 0}, "stages.downsample.levels"),
    ],
)
def test_bad_downsample_config_is_refused_before_any_work(tmp_path, small_inputs, block_voxels, downsample, message):
    path = write_config(tmp_path, small_inputs, block_voxels=block_voxels, stages__downsample=downsample)
    with pytest.raises(ConfigError, match=message):
        open_run(load_config(path))
    assert not (tmp_path / "out" / "volumes.zarr").exists()
