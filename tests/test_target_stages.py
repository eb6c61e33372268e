"""Training targets as blockwise stages: blockwise = whole, resume, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.config import ConfigError, load_config
from blockseg.pipeline import open_run, run_pipeline
from helpers import read_dataset, write_config
from workers import channels as channels_worker
from workers import lsds as lsds_worker
from workers import weights as weights_worker

VOXEL_SIZE = (20, 10, 10)


def _targets_config(folder, inputs, **stages):
    config = write_config(folder, inputs, block_voxels=(16, 48, 48), stages=stages)
    text = config.read_text().replace(f"  affinities: {inputs}/affinities\n", "")
    config.write_text(text)
    return load_config(config)


def test_targets_blockwise_equal_whole(tmp_path, small_inputs, client):
    stages = {
        "lsds": {"sigma": 40},
        "channels": {"channel_set": "BCD", "distance_clip": 50},
        "weights": {"bws": 20, "fds": 20},
    }
    config = _targets_config(tmp_path, small_inputs, **stages)
    assert config.input.affinities is None
    run = open_run(config)
    reports = run_pipeline(run, client)
    run.store.close()
    # only the target stages run without affinities
    assert set(reports) == {"lsds", "channels", "weights"}
    # 32 x 128 x 128 voxels in blocks of 16 x 48 x 48: 2 x 3 x 3, the last ones clipped
    assert reports["lsds"].total == 18

    labels = read_dataset(f"{small_inputs}/labels")
    whole = {
        "lsds": lsds_worker.local_shape_descriptors(labels, sigma=40, voxel_size=VOXEL_SIZE),
        "channels": channels_worker.instance_channels(labels, "BCD", voxel_size=VOXEL_SIZE, distance_clip=50),
        "weights": weights_worker.unet_weights(labels, bws=20, fds=20, voxel_size=VOXEL_SIZE),
    }
    for name, expected in whole.items():
        got = read_dataset(run.dataset_url(name))
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected.astype(np.float32), atol=1e-6, rtol=0, err_msg=name)
        # not trivially equal: the targets vary
        assert float(np.std(got)) > 0.01, name

    again = open_run(config)
    second = run_pipeline(again, client)
    again.store.close()
    assert sum(r.submitted for r in second.values()) == 0


@pytest.mark.parametrize("stages, message", [
    ({"lsds": {"sigma": 0}}, "sigma"),
    ({"lsds": {"sigma": 40, "components": "0x"}}, "components"),
    ({"channels": {"channel_set": "XYZ"}}, "XYZ"),
    ({"channels": {"channel_set": "BCD"}}, "distance_clip"),
])
def test_bad_target_parameters(tmp_path, small_inputs, stages, message):
    config = _targets_config(tmp_path, small_inputs, **stages)
    with pytest.raises(ConfigError, match=message):
        open_run(config).store.close()
