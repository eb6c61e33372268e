"""The embedding stages of the pipeline: embeddings -> affinities, mutex watershed and
channel instances stitched across blocks, the PCA preview, and their config errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from blockseg.config import ConfigError, load_config
from blockseg.geometry import Roi
from blockseg.pipeline import InputError, open_run, run_pipeline
from blockseg.volume import create_volume, open_volume
from helpers import read_dataset, voronoi_cells
from workers import evaluate as evaluate_worker

VOXEL_SIZE = (20, 10, 10)
SHAPE = (32, 96, 96)
BLOCK_VOXELS = (16, 48, 48)
DELTA = 1.0
# nearest neighbours first (the fragments stage reads them), then long-range ones
OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -4, 0], [0, 0, -4], [0, -4, -4], [0, 4, -4]]


def _embeddings_from(labels: np.ndarray, dims: int = 8, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """A random unit-scale vector per instance (background too) plus Gaussian noise per voxel."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(labels.max()) + 1, dims)) * 2 * DELTA
    embeddings = centres[labels].transpose(3, 0, 1, 2)
    return (embeddings + rng.normal(scale=noise, size=embeddings.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Labels (touching Voronoi cells), embeddings made from them, and BC channels of them."""
    from workers import channels as channels_worker

    folder = tmp_path_factory.mktemp("embedding_inputs")
    labels = voronoi_cells(SHAPE, n_seeds=60, radius=14, seed=3)
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(SHAPE, VOXEL_SIZE)))
    url = folder / "input.zarr"
    create_volume(f"{url}/labels", roi, VOXEL_SIZE, "uint64", SHAPE).write(roi, labels.astype(np.uint64))
    embeddings = _embeddings_from(labels)
    create_volume(f"{url}/embeddings", roi, VOXEL_SIZE, "float32", SHAPE, (len(embeddings),)).write(roi, embeddings)
    channels = channels_worker.instance_channels(labels, "BC", voxel_size=VOXEL_SIZE).astype(np.float32)
    create_volume(f"{url}/channels", roi, VOXEL_SIZE, "float32", SHAPE, (len(channels),)).write(roi, channels)
    return {"url": url, "labels": labels, "embeddings": embeddings, "channels": channels}


def _config(folder, inputs, input_keys=("embeddings",), **stages):
    config = {
        "input": {key: f"{inputs['url']}/{key}" for key in input_keys} | {"ground_truth": f"{inputs['url']}/labels"},
        "output": "out",
        "block_shape": [b * v for b, v in zip(BLOCK_VOXELS, VOXEL_SIZE)],
        "stages": {"segments": {"thresholds": [0.5]}, **stages},
        "scheduler": {"progress": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run(path, client, **kwargs):
    run = open_run(load_config(path))
    try:
        reports = run_pipeline(run, client, **kwargs)
    finally:
        run.store.close()
    return run, reports


def _voi(segmentation: np.ndarray, truth: np.ndarray) -> float:
    return evaluate_worker.scores_from_contingency(evaluate_worker.contingency_table(segmentation, truth))["voi_sum"]


def test_embeddings_to_affinities_blockwise_equal_whole_and_feed_fragments(tmp_path, inputs, client):
    from workers import embeddings as embeddings_worker

    # one-voxel-wide boundaries lower the mean of the three affinities to about 2/3
    path = _config(
        tmp_path, inputs, embeddings_to_affinities={"offsets": OFFSETS, "delta": DELTA},
        fragments={"boundary_threshold": 0.7}, segments={"thresholds": [0.5]},
    )
    run, reports = _run(path, client)
    # the classic fragments stage runs on the computed affinities
    assert {"embeddings_to_affinities", "fragments", "agglomerate", "segments", "relabel", "evaluate"} <= set(reports)
    assert "mws" not in reports and "stitch" not in reports
    expected = embeddings_worker.embeddings_to_affinities(inputs["embeddings"], OFFSETS, DELTA)
    got = read_dataset(run.dataset_url("affinities"))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert 0.1 < float(got.mean()) < 0.99
    # the fragments follow the objects' boundaries in these affinities: they
    # split objects (watershed fragments do) but hardly merge any
    assert run.scores["fragments"]["voi_merge"] < 0.5, run.scores["fragments"]


def test_mws_blockwise_within_005_voi_of_whole(tmp_path, inputs, client):
    """Check 3b: blockwise mws + stitch scores within 0.05 VOI of the whole-volume mutex watershed."""
    from workers import embeddings as embeddings_worker
    from workers import mutex

    path = _config(
        tmp_path, inputs,
        embeddings_to_affinities={"offsets": OFFSETS, "delta": DELTA},
        mws={"bias": -0.5},
    )
    run, reports = _run(path, client)
    assert reports["mws"].total == 2 * 2 * 2
    assert "fragments" not in reports and "agglomerate" not in reports
    truth = inputs["labels"]
    pieces = read_dataset(run.fragments_url)
    blockwise = read_dataset(run.segmentation_url(0.5))

    affinities = embeddings_worker.embeddings_to_affinities(inputs["embeddings"], OFFSETS, DELTA)
    whole = mutex.mutex_watershed(affinities, OFFSETS, bias=-0.5)
    voi_whole, voi_blocks, voi_pieces = _voi(whole, truth), _voi(blockwise, truth), _voi(pieces, truth)
    # the whole-volume result is a real segmentation, and stitching is what makes
    # the blockwise one as good: the unstitched pieces are far worse
    assert voi_whole < 0.3, voi_whole
    assert abs(voi_blocks - voi_whole) <= 0.05, (voi_blocks, voi_whole)
    assert voi_pieces > voi_blocks + 0.3, (voi_pieces, voi_blocks)
    # the pipeline's own evaluation agrees with the one here
    assert run.scores["thresholds"]["0.5"]["voi_sum"] == pytest.approx(voi_blocks, abs=1e-9)
    # ids are unique per block: a piece's home block is id // ids_per_block
    homes = np.unique(pieces[pieces > 0] // np.uint64(run.ids_per_block))
    assert set(homes.tolist()) == set(range(8))

    _, again = _run(path, client)
    assert sum(report.submitted for report in again.values()) == 0
    # the halos are an output like the fragments: without them mws and all after it rerun, to the same result
    shutil.rmtree(tmp_path / "out" / "volumes.zarr" / "mws_halos")
    _, redo = _run(path, client)
    assert redo["embeddings_to_affinities"].submitted == 0
    assert redo["mws"].submitted == redo["stitch"].submitted == 8
    np.testing.assert_array_equal(read_dataset(run.segmentation_url(0.5)), blockwise)


def test_mws_on_embedding_distances(tmp_path, inputs, client):
    """mws with a distance type segments the embeddings directly, like the whole-volume embedding mws."""
    from workers import embeddings as embeddings_worker

    path = _config(tmp_path, inputs, mws={"offsets": OFFSETS, "distance": "l2", "delta": DELTA, "bias": 0.0})
    run, reports = _run(path, client)
    assert "embeddings_to_affinities" not in reports
    truth = inputs["labels"]
    # elf's discriminative-loss weight, written out here independently of the stage
    def weight(d):
        return 1 - np.maximum((2 * DELTA - d) / (2 * DELTA), 0) ** 2

    whole = embeddings_worker.segment_embeddings_mws(inputs["embeddings"], OFFSETS, "l2", weight_function=weight)
    voi_whole, voi_blocks = _voi(whole, truth), _voi(read_dataset(run.segmentation_url(0.5)), truth)
    assert voi_whole < 0.3, voi_whole
    assert abs(voi_blocks - voi_whole) <= 0.05, (voi_blocks, voi_whole)


def test_mws_on_network_affinities_with_bias_and_strides(tmp_path, inputs, client, client_one_worker):
    """Affinities given as an input with their offsets; per-offset bias and strides; same result on 1 or 2 workers."""
    from workers import embeddings as embeddings_worker

    affinities = embeddings_worker.embeddings_to_affinities(inputs["embeddings"], OFFSETS, DELTA)
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(SHAPE, VOXEL_SIZE)))
    url = f"{tmp_path}/affs.zarr/affinities"
    create_volume(url, roi, VOXEL_SIZE, "uint8", SHAPE, (len(OFFSETS),)).write(
        roi, np.rint(affinities * 255).astype(np.uint8)
    )
    results = []
    for name, c in (("one", client_one_worker), ("two", client)):
        folder = tmp_path / name
        folder.mkdir()
        path = _config(folder, inputs, input_keys=(), mws={
            "offsets": OFFSETS, "bias": [-0.5] * 3 + [-0.6] * 5, "strides": [1, 2, 2],
        })
        text = yaml.safe_load(path.read_text())
        text["input"]["affinities"] = url
        path.write_text(yaml.safe_dump(text))
        run, reports = _run(path, c)
        assert "check" in reports  # network affinities are scanned like any input
        results.append(read_dataset(run.segmentation_url(0.5)))
    np.testing.assert_array_equal(results[0], results[1])
    assert _voi(results[0], inputs["labels"]) < 0.5


def test_channel_instances_blockwise_close_to_whole(tmp_path, inputs, client):
    from workers import channel_instances

    extent = 40 * VOXEL_SIZE[-1]
    # Voronoi growth gives the contour voxels back to their objects
    parameters = {"voronoi_on_mask": True}
    path = _config(tmp_path, inputs, input_keys=("channels",), channel_instances={
        "channel_set": "BC", "max_object_extent": extent, "parameters": parameters,
    })
    run, reports = _run(path, client)
    assert {"channel_instances", "stitch", "segments", "relabel"} <= set(reports)
    truth = inputs["labels"]
    whole = channel_instances.segment_channels(inputs["channels"], "BC", voxel_size=VOXEL_SIZE, **parameters)
    blockwise = read_dataset(run.segmentation_url(0.5))
    pieces = read_dataset(run.fragments_url)
    voi_whole, voi_blocks = _voi(whole, truth), _voi(blockwise, truth)
    assert voi_whole < 0.5, voi_whole
    assert abs(voi_blocks - voi_whole) <= 0.05, (voi_blocks, voi_whole)
    assert _voi(pieces, truth) > voi_blocks + 0.3


def _seam_jumps(rgb: np.ndarray, labels: np.ndarray, axis: int, seam: int) -> tuple[float, float]:
    """Mean colour difference between neighbours of the same object: across ``seam``, and elsewhere."""
    rgb = rgb.astype(np.float64)
    first = np.take(rgb, np.arange(rgb.shape[axis + 1] - 1), axis=axis + 1)
    second = np.take(rgb, np.arange(1, rgb.shape[axis + 1]), axis=axis + 1)
    same = np.take(labels, np.arange(labels.shape[axis] - 1), axis=axis) == np.take(
        labels, np.arange(1, labels.shape[axis]), axis=axis
    )
    difference = np.abs(first - second).sum(axis=0)
    across = np.take(difference, seam - 1, axis=axis)[np.take(same, seam - 1, axis=axis)]
    inside_index = [i for i in range(difference.shape[axis]) if i != seam - 1]
    inside = np.take(difference, inside_index, axis=axis)[np.take(same, inside_index, axis=axis)]
    return float(across.mean()), float(inside.mean())


def test_pca_preview_has_no_seams(tmp_path, inputs, client):
    """Check 4b: colours change no more across a block seam than inside a block."""
    from workers import embeddings as embeddings_worker

    path = _config(tmp_path, inputs, pca_preview={"samples": 5000})
    run, reports = _run(path, client)
    assert set(reports) == {"pca_preview"}
    preview = open_volume(run.dataset_url("pca_preview"))
    rgb = preview.read(preview.roi)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, *SHAPE)
    axes = preview.array.attrs["multiscales"][0]["axes"]
    assert [(a["name"], a["type"]) for a in axes] == [("c", "channel"), ("z", "space"), ("y", "space"), ("x", "space")]
    assert rgb.std() > 10  # objects get different colours
    labels = inputs["labels"]
    for axis, seam in ((0, BLOCK_VOXELS[0]), (1, BLOCK_VOXELS[1]), (2, BLOCK_VOXELS[2])):
        across, inside = _seam_jumps(rgb, labels, axis, seam)
        assert across <= 1.5 * inside + 1, (axis, across, inside)

    # the test can fail: a PCA fitted per block (colours that differ between
    # blocks) shows jumps at the seam along x
    per_block = np.zeros_like(rgb)
    embeddings = inputs["embeddings"]
    for start in (0, BLOCK_VOXELS[2]):
        part = embeddings[..., start : start + BLOCK_VOXELS[2]]
        model = embeddings_worker.fit_embedding_pca(part.reshape(len(part), -1).T[::7].astype(np.float64))
        per_block[..., start : start + BLOCK_VOXELS[2]] = np.rint(
            embeddings_worker.apply_embedding_pca(part, model) * 255
        ).astype(np.uint8)
    across, inside = _seam_jumps(per_block, labels, 2, BLOCK_VOXELS[2])
    assert across > 1.5 * inside + 1, (across, inside)


@pytest.mark.parametrize("stages, message", [
    ({"embeddings_to_affinities": {"offsets": [[0, -1]], "delta": 1.0}}, "3 values"),
    ({"embeddings_to_affinities": {"offsets": [[0, 0, 0]], "delta": 1.0}}, "is zero"),
    ({"embeddings_to_affinities": {"offsets": OFFSETS, "delta": 1.0}, "mws": {"offsets": [[1, 0, 0, 0]]}}, "3 values"),
    ({"embeddings_to_affinities": {"offsets": OFFSETS, "delta": 1.0}, "mws": {"bias": [0.1, 0.2]}}, "one per offset"),
    ({"embeddings_to_affinities": {"offsets": OFFSETS, "delta": 1.0}, "mws": {"strides": [2, 2]}}, "strides"),
    ({"embeddings_to_affinities": {"offsets": OFFSETS[3:], "delta": 1.0}}, "nearest"),
    ({"channel_instances": {"channel_set": "XYZ", "max_object_extent": 400}}, "unknown channel set 'XYZ'"),
    ({"channel_instances": {"channel_set": "BC", "max_object_extent": 400,
                            "parameters": {"data_mw_th_contour": 1.5}}}, r"\[0, 1\]"),
    ({"channel_instances": {"channel_set": "BC", "max_object_extent": 400,
                            "parameters": {"no_such_threshold": 0.5}}}, "no_such_threshold"),
    ({"channel_instances": {"channel_set": "BC"}}, "max_object_extent"),
    ({"mws": {"offsets": OFFSETS}, "channel_instances": {"channel_set": "BC", "max_object_extent": 400}}, "not both"),
    ({"pca_preview": {"samples": 0}}, "samples"),
    ({"mws": {"offsets": OFFSETS, "distance": "hamming"}}, "'l2', 'cosine' or 'l1'"),
    ({"mws": {"offsets": [[0, -1], [0, -3]], "distance": "l2"}}, "3 values"),
    ({"mws": {"offsets": OFFSETS, "distance": "l2", "bias": [0.1] * 8}}, "bias is one value"),
])
def test_bad_embedding_stage_config(tmp_path, inputs, stages, message):
    """Check 6: one-line config errors, and exit status 2 from the CLI."""
    from blockseg.cli import main

    path = _config(tmp_path, inputs, input_keys=("embeddings", "channels"), **stages)
    with pytest.raises(ConfigError, match=message) as raised:
        open_run(load_config(path)).store.close()
    assert "\n" not in str(raised.value)
    assert main(["run", str(path)]) == 2


def test_mws_offsets_must_match_the_affinity_channels(tmp_path, inputs):
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(SHAPE, VOXEL_SIZE)))
    url = f"{tmp_path}/affs.zarr/affinities"
    create_volume(url, roi, VOXEL_SIZE, "float32", SHAPE, (3,))
    path = _config(tmp_path, inputs, input_keys=(), mws={"offsets": OFFSETS})
    text = yaml.safe_load(path.read_text())
    text["input"]["affinities"] = url
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(InputError, match="8 offsets for 3 affinity channels"):
        open_run(load_config(path)).store.close()
