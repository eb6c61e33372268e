"""Defaults that fit the data (blockseg/data_defaults.py): the input kind and voxel size choose the fragments settings.

A config that leaves the keys out gets them when its run opens; a config
that gives them (every YAML written before these rules) keeps its own.
"""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.config import load_config
from blockseg.data_defaults import ANISOTROPIC_RATIO, fragments_defaults
from blockseg.errors import ConfigError
from blockseg.geometry import Roi
from blockseg.pipeline import open_run
from blockseg.tasks.fragments import fragments_context
from blockseg.volume import create_volume
from helpers import write_config


@pytest.mark.parametrize(
    "kind, voxel_size, expected",
    [
        # isotropic FIB-SEM: the values every run had before the rules (100 nm seeds, 5 nm smoothing)
        ("affinities", (10, 10, 10), ("affinity_watershed", 5.0, 100.0, False)),
        ("boundaries", (10, 10, 10), ("boundary_watershed", 5.0, 100.0, False)),
        ("affinities", (20, 10, 10), ("affinity_watershed", 5.0, 100.0, False)),
        # serial sections: the affinity watershed stays 3D and seeds every section
        ("affinities", (40, 8, 8), ("affinity_watershed", 4.0, [0.0, 80.0, 80.0], False)),
        ("affinities", (50, 4, 4), ("affinity_watershed", 2.0, [0.0, 40.0, 40.0], False)),
        # a voxel map on serial sections is flooded per section
        ("boundaries", (40, 8, 8), ("boundary_watershed", 4.0, 80.0, True)),
    ],
)
def test_the_rules(kind, voxel_size, expected):
    chosen = fragments_defaults(kind, voxel_size)
    assert (chosen["method"], chosen["smooth_sigma"], chosen["min_seed_distance"], chosen["fragments_in_xy"]) == expected


def test_serial_sections_start_at_the_ratio():
    assert not fragments_defaults("boundaries", (ANISOTROPIC_RATIO * 10 - 1, 10, 10))["fragments_in_xy"]
    assert fragments_defaults("boundaries", (ANISOTROPIC_RATIO * 10, 10, 10))["fragments_in_xy"]


def test_the_context_reads_at_least_six_voxels_per_axis():
    # the nm rule alone gives 3 sections of 40 nm (half of 80 nm plus 3 x 4 nm)
    assert fragments_context("affinity_watershed", [0.0, 80.0, 80.0], 4.0, (40, 8, 8)) == (240, 56, 56)
    # isotropic data keeps its rule: half the seed distance plus 3 sigma, 7 voxels
    assert fragments_context("affinity_watershed", 100.0, 5.0, (10, 10, 10)) == (70, 70, 70)
    assert fragments_context("boundary_watershed", 100.0, 5.0, (10, 10, 10)) == (120, 120, 120)


def _anisotropic_inputs(folder, voxel_size=(40, 8, 8)):
    shape = (12, 32, 32)
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(shape, voxel_size)))
    inputs = folder / "inputs.zarr"
    create_volume(f"{inputs}/affinities", roi, voxel_size, np.float32, (6, 16, 16), (3,)).write(
        roi, np.ones((3,) + shape, np.float32)
    )
    create_volume(f"{inputs}/labels", roi, voxel_size, np.uint64, (6, 16, 16)).write(roi, np.ones(shape, np.uint64))
    return inputs


def test_a_run_fills_only_what_the_config_leaves_out(tmp_path):
    inputs = _anisotropic_inputs(tmp_path)
    (tmp_path / "auto").mkdir()
    run = open_run(load_config(write_config(tmp_path / "auto", inputs, block_voxels=(6, 16, 16), voxel_size=(40, 8, 8))))
    run.store.close()
    fragments = run.config.stages.fragments
    assert (fragments.method, fragments.min_seed_distance, fragments.smooth_sigma, fragments.fragments_in_xy) == (
        "affinity_watershed", [0.0, 80.0, 80.0], 4.0, False
    )
    assert run.data_defaults == {
        "method": "affinity_watershed", "smooth_sigma": 4.0, "min_seed_distance": [0.0, 80.0, 80.0],
        "fragments_in_xy": False,
    }
    # an old YAML: every key given, nothing filled, nothing changed
    old = {"method": "boundary_watershed", "min_seed_distance": 100, "smooth_sigma": 5, "fragments_in_xy": False}
    (tmp_path / "old").mkdir()
    run = open_run(load_config(write_config(tmp_path / "old", inputs, block_voxels=(6, 16, 16), voxel_size=(40, 8, 8),
                                            stages__fragments=old)))
    run.store.close()
    fragments = run.config.stages.fragments
    assert (fragments.method, fragments.min_seed_distance, fragments.smooth_sigma, fragments.fragments_in_xy) == (
        "boundary_watershed", 100.0, 5.0, False
    )
    assert run.data_defaults == {}
    # one key given: the others follow the data, and the given method's rule
    (tmp_path / "one").mkdir()
    run = open_run(load_config(write_config(tmp_path / "one", inputs, block_voxels=(6, 16, 16), voxel_size=(40, 8, 8),
                                            stages__fragments={"method": "boundary_watershed"})))
    run.store.close()
    assert run.config.stages.fragments.fragments_in_xy is True
    assert run.config.stages.fragments.min_seed_distance == 80.0


@pytest.mark.parametrize(
    "value, message",
    [
        ([0, 0, 0], "not all 0"),
        ([100, 100], "3 (z, y, x)"),
        ([-1, 100, 100], "at least 0"),
        (0, "greater than 0"),
    ],
)
def test_a_bad_seed_distance_is_refused_by_the_config(tmp_path, value, message):
    inputs = _anisotropic_inputs(tmp_path)
    path = write_config(tmp_path, inputs, block_voxels=(6, 16, 16), voxel_size=(40, 8, 8),
                        stages__fragments={"min_seed_distance": value})
    with pytest.raises(ConfigError, match=r"stages\.fragments\.min_seed_distance") as error:
        load_config(path)
    assert message in str(error.value)
