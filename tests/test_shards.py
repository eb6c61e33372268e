"""Issue 10 check 2: sharded outputs, codecs per output, and the shard alignment rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockseg.config import ConfigError, load_config
from blockseg.layout import default_inner_chunk, output_layout
from blockseg.pipeline import open_run, run_pipeline
from helpers import read_dataset, write_config

BLOCK = (32, 64, 64)
INNER = (16, 32, 32)  # shards of 2 x 2 x 2 chunks


def _run(folder: Path, inputs: Path, client, **sections):
    folder.mkdir()
    config = load_config(write_config(folder, inputs, block_voxels=BLOCK, **sections))
    run = open_run(config)
    try:
        run_pipeline(run, client)
    finally:
        run.store.close()
    return run


def _objects(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_two_workers_write_the_same_shards_as_one(tmp_path, small_inputs, client, client_one_worker):
    sharded = {"storage__outputs": {"default": {"shard_shape": list(BLOCK), "chunk_shape": list(INNER)}}}
    runs = {
        "one": _run(tmp_path / "one", small_inputs, client_one_worker, **sharded),
        "two": _run(tmp_path / "two", small_inputs, client, **sharded),
        # an independent reference: one plain chunk per block, no shards
        "plain": _run(tmp_path / "plain", small_inputs, client, storage__outputs={"default": {"sharded": False}}),
    }
    fragments = {name: read_dataset(run.fragments_url) for name, run in runs.items()}
    segmentation = {name: read_dataset(run.segmentation_url(0.5)) for name, run in runs.items()}
    for name in ("two", "plain"):
        np.testing.assert_array_equal(fragments[name], fragments["one"])
        np.testing.assert_array_equal(segmentation[name], segmentation["one"])
    # a lost inner chunk would read back as the fill value 0 somewhere
    assert np.all(fragments["two"] > 0)
    assert len(np.unique(segmentation["two"])) > 10

    volumes = tmp_path / "two" / "out" / "volumes.zarr"
    array = zarr.open_array(volumes / "fragments", mode="r")
    assert array.shards == BLOCK and array.chunks == INNER
    shape = array.shape
    shards = math.prod(math.ceil(s / b) for s, b in zip(shape, BLOCK))
    for name in ("fragments", "segmentation/threshold_0.5"):
        files = _objects(volumes / name)
        metadata = [f for f in files if f.name == "zarr.json"]
        assert len(metadata) == 1
        assert len(files) == shards + len(metadata), sorted(str(f.relative_to(volumes)) for f in files)
    # the whole container: one object per shard per array, plus one zarr.json per array and group
    arrays, groups = 2, 2  # fragments, segmentation/threshold_0.5; the root and segmentation/
    assert len(_objects(volumes)) == arrays * shards + arrays + groups


def test_codec_per_output(tmp_path, small_inputs, client):
    outputs = {"fragments": {"codec": "zstd", "level": 5}, "segmentation": {"codec": "blosc-lz4"}}
    run = _run(tmp_path / "codecs", small_inputs, client, storage__outputs=outputs)
    fragments = zarr.open_array(run.fragments_url, mode="r")
    segmentation = zarr.open_array(run.segmentation_url(0.5), mode="r")
    (fragment_codec,) = fragments.compressors
    (segmentation_codec,) = segmentation.compressors
    assert type(fragment_codec).__name__ == "ZstdCodec" and fragment_codec.level == 5
    assert type(segmentation_codec).__name__ == "BloscCodec" and segmentation_codec.cname.value == "lz4"
    assert segmentation_codec.shuffle.value == "shuffle"
    # defaults: sharded by block, inner chunks of at most 64 voxels per axis
    assert fragments.shards == BLOCK and fragments.chunks == default_inner_chunk(BLOCK) == (32, 64, 64)


@pytest.mark.parametrize(
    "outputs, message",
    [
        ({"default": {"shard_shape": [32, 48, 48]}}, "not a multiple of storage.outputs.default.shard_shape"),
        ({"fragments": {"shard_shape": [32, 64, 64], "chunk_shape": [16, 24, 32]}}, "does not divide the shard"),
        ({"segmentation": {"sharded": False, "chunk_shape": [32, 40, 64]}}, "not a multiple of storage.outputs.segmentation.chunk_shape"),
        ({"default": {"shard_shape": [32, 64]}}, "expected 3 values"),
    ],
)
def test_blocks_that_are_not_whole_shards_are_refused_before_any_work(tmp_path, small_inputs, outputs, message):
    config = load_config(write_config(tmp_path, small_inputs, block_voxels=BLOCK, storage__outputs=outputs))
    with pytest.raises(ConfigError, match=message) as error:
        open_run(config)
    assert len(str(error.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_codec_is_a_config_error(tmp_path, small_inputs):
    with pytest.raises(ConfigError, match="storage.outputs.default.codec"):
        load_config(write_config(tmp_path, small_inputs, storage__outputs={"default": {"codec": "gzip"}}))


def test_layout_rules(tmp_path, small_inputs):
    config = load_config(write_config(
        tmp_path, small_inputs, storage__outputs={"default": {"codec": "zstd"}, "fragments": {"shard_shape": [16, 64, 64]}},
    ))
    # the output's own entry wins field by field; the rest comes from default
    assert output_layout(config, "fragments", (32, 128, 128)) == {
        "chunk_shape": (16, 64, 64), "shard_shape": (16, 64, 64), "codec": "zstd", "level": None,
    }
    # a stage's chunk_shape is the inner chunk inside the block-sized shard
    assert output_layout(config, "segmentation", (32, 128, 128), (8, 32, 32))["chunk_shape"] == (8, 32, 32)
    assert output_layout(config, "segmentation", (32, 128, 128))["shard_shape"] == (32, 128, 128)
    assert default_inner_chunk((64, 512, 512)) == (64, 64, 64)
    assert default_inner_chunk((30, 100, 7)) == (30, 50, 7)
