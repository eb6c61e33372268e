"""The whole pipeline through the Python API: blockwise = whole, determinism, resume."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from blockseg.config import load_config
from blockseg.pipeline import open_run, run_pipeline
from helpers import read_dataset, write_config


def _run(config, client, **kwargs):
    run = open_run(config)
    try:
        reports = run_pipeline(run, client, **kwargs)
    finally:
        run.store.close()
    return run, reports


def test_blockwise_scores_like_one_block(tmp_path, demo_inputs, client):
    """Check 2: 32 x 64 x 64 blocks score within 0.05 VOI of one block covering everything."""
    (tmp_path / "blocks").mkdir()
    (tmp_path / "whole").mkdir()
    blockwise = load_config(write_config(tmp_path / "blocks", demo_inputs, block_voxels=(32, 64, 64)))
    whole = load_config(write_config(tmp_path / "whole", demo_inputs, block_voxels=(64, 192, 192)))
    run_blocks, reports = _run(blockwise, client)
    run_whole, whole_reports = _run(whole, client)
    assert reports["fragments"].total == 2 * 3 * 3
    assert whole_reports["fragments"].total == 1
    best_blocks = run_blocks.scores["best"]["voi_sum"]
    best_whole = run_whole.scores["best"]["voi_sum"]
    # both must be real segmentations, not two equally bad ones
    assert best_whole < 0.5
    assert abs(best_blocks - best_whole) <= 0.05, (best_blocks, best_whole)


def test_same_output_with_one_or_two_workers(tmp_path, small_inputs, client, client_one_worker):
    """Check 3a: bit-identical segmentation whatever the number of workers."""
    outputs = []
    for name, c in (("one", client_one_worker), ("two", client)):
        folder = tmp_path / name
        folder.mkdir()
        config = load_config(write_config(folder, small_inputs))
        run, _ = _run(config, c)
        outputs.append((read_dataset(run.fragments_url), read_dataset(run.segmentation_url(0.5))))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    assert len(np.unique(outputs[0][1])) > 10


def test_second_run_submits_nothing(tmp_path, small_inputs, client):
    """Check 4a: a finished output is not recomputed."""
    config = load_config(write_config(tmp_path, small_inputs))
    _, first = _run(config, client)
    assert first["fragments"].submitted == first["fragments"].total > 1
    _, second = _run(config, client)
    assert sum(report.submitted for report in second.values()) == 0
    assert all(report.skipped == report.total for report in second.values())


def test_deleted_output_is_recomputed(tmp_path, small_inputs, client):
    """Check 4b: deleting a dataset (or the whole output) invalidates its done marks."""
    config = load_config(write_config(tmp_path, small_inputs))
    run, first = _run(config, client)
    reference = read_dataset(run.segmentation_url(0.5))

    shutil.rmtree(tmp_path / "out" / "volumes.zarr" / "fragments")
    _, again = _run(config, client)
    total = first["fragments"].total
    # fragments are redone, and so is everything that read them
    assert again["fragments"].submitted == total
    assert again["agglomerate"].submitted == total
    assert again["relabel"].submitted == total
    np.testing.assert_array_equal(read_dataset(run.segmentation_url(0.5)), reference)

    shutil.rmtree(tmp_path / "out" / "volumes.zarr" / "segmentation")
    _, only_relabel = _run(config, client)
    assert only_relabel["fragments"].submitted == 0
    assert only_relabel["relabel"].submitted == total
    np.testing.assert_array_equal(read_dataset(run.segmentation_url(0.5)), reference)

    shutil.rmtree(tmp_path / "out")
    _, fresh = _run(config, client)
    assert fresh["fragments"].submitted == total
    np.testing.assert_array_equal(read_dataset(run.segmentation_url(0.5)), reference)


def test_changed_parameter_recomputes(tmp_path, small_inputs, client):
    config = load_config(write_config(tmp_path, small_inputs))
    run, first = _run(config, client)
    changed = load_config(write_config(tmp_path, small_inputs, stages__agglomerate={"scoring": "mean"}))
    _, second = _run(changed, client)
    assert second["fragments"].submitted == 0
    assert second["agglomerate"].submitted == first["agglomerate"].total


def test_restart_redoes_everything(tmp_path, small_inputs, client):
    config = load_config(write_config(tmp_path, small_inputs))
    run, first = _run(config, client)
    reference = read_dataset(run.segmentation_url(0.5))
    _, again = _run(config, client, restart=True)
    assert again["fragments"].submitted == first["fragments"].total
    np.testing.assert_array_equal(read_dataset(run.segmentation_url(0.5)), reference)


def test_stages_subset_needs_upstream(tmp_path, small_inputs, client):
    from blockseg.pipeline import InputError

    config = load_config(write_config(tmp_path, small_inputs))
    run = open_run(config)
    with pytest.raises(InputError, match="needs stage fragments"):
        run_pipeline(run, client, stages=["agglomerate"])
    run.store.close()


def test_file_store_gives_the_same_segmentation(tmp_path, small_inputs, client):
    """Graph stores, check 3: bit-identical segmentations with either store."""
    outputs = []
    for name, graph in (("sqlite", "sqlite:///out/graph.db"), ("files", "file://out/graph")):
        folder = tmp_path / name
        folder.mkdir()
        config = load_config(write_config(folder, small_inputs, graph=graph))
        run, reports = _run(config, client)
        assert run.store.url.startswith("file://" if name == "files" else "sqlite:///")
        outputs.append((read_dataset(run.fragments_url), read_dataset(run.segmentation_url(0.5)), run.scores))
        # and the file store resumes like the other
        _, again = _run(config, client)
        assert sum(report.submitted for report in again.values()) == 0
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    assert outputs[0][2] == outputs[1][2]
    assert (tmp_path / "files" / "out" / "graph" / "blocks" / "fragments" / "0.npz").exists()


def test_store_of_another_block_grid_is_refused(tmp_path, small_inputs, client):
    """Graph stores, check 5: a store written with another block size is an error, not overwritten."""
    from blockseg.graph import StoreError

    config = load_config(write_config(tmp_path, small_inputs))
    run, _ = _run(config, client)
    reference = read_dataset(run.segmentation_url(0.5))
    other = load_config(write_config(tmp_path, small_inputs, block_voxels=(16, 64, 64)))
    with pytest.raises(StoreError, match="block_shape"):
        open_run(other)
    np.testing.assert_array_equal(read_dataset(run.segmentation_url(0.5)), reference)
    again = open_run(config)  # the original config still opens it
    assert again.store.done_blocks("fragments")
    again.store.close()
    # --restart takes the store over for the new grid
    restarted = open_run(other, restart=True)
    reports = run_pipeline(restarted, client, restart=True)
    restarted.store.close()
    assert reports["fragments"].total == 2 * 2 * 2
