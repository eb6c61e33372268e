"""Storage URLs in configs and volumes: local paths, file:// URLs, what stays local, what is refused."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg import storage
from blockseg.config import ConfigError, load_config
from blockseg.geometry import Roi
from blockseg.volume import create_volume, open_volume, split_array_url
from helpers import read_dataset, write_config


def test_split_protocol():
    assert storage.split_protocol("s3://bucket/a/run.zarr") == ("s3", "bucket/a/run.zarr")
    assert storage.split_protocol("file:///data/run.zarr") == ("file", "/data/run.zarr")
    assert storage.split_protocol("relative/run.zarr") == ("file", "relative/run.zarr")
    assert storage.is_remote("s3://b/x") and not storage.is_remote("/x") and not storage.is_remote("file:///x")
    with pytest.raises(storage.StorageError, match="credentials in a URL") as error:
        storage.split_protocol("s3://AKIA:hunter2@bucket/x.zarr")
    assert "hunter2" not in str(error.value)


def test_split_array_url_keeps_the_scheme():
    assert split_array_url("s3://bucket/run/volumes.zarr/segmentation/t") == ("s3://bucket/run/volumes.zarr", "segmentation/t")
    assert split_array_url("file:///d/in.zarr/raw") == ("file:///d/in.zarr", "raw")
    assert split_array_url("/d/in.n5/volumes/raw") == ("/d/in.n5", "volumes/raw")


def test_file_urls_read_and_write_like_paths(tmp_path):
    roi = Roi((0, 0, 0), (40, 80, 80))
    data = np.arange(2 * 8 * 8, dtype=np.uint64).reshape(2, 8, 8)
    url = f"file://{tmp_path}/c.zarr/labels"
    created = create_volume(url, roi, (20, 10, 10), np.uint64, (2, 4, 4), shard_shape=(2, 8, 8), codec="zstd")
    created.write(roi, data)
    assert (tmp_path / "c.zarr" / "labels" / "zarr.json").exists()
    np.testing.assert_array_equal(read_dataset(tmp_path / "c.zarr" / "labels"), data)
    np.testing.assert_array_equal(read_dataset(url), data)
    assert open_volume(url).chunk_shape == (2, 8, 8)  # writes are safe per shard


def test_storage_options_defaults_and_overrides():
    saved = dict(storage._OPTIONS)
    try:
        storage.set_storage_options("s3", {"endpoint_url": "http://127.0.0.1:9000", "config_kwargs": {"connect_timeout": 5}})
        options = storage.storage_options("s3://bucket/x.zarr")
        assert options["endpoint_url"] == "http://127.0.0.1:9000"
        # the user's value wins, the other short-timeout defaults stay
        assert options["config_kwargs"]["connect_timeout"] == 5
        assert options["config_kwargs"]["retries"]["max_attempts"] == 2
        assert storage.storage_options("/local/x.zarr") == {}
        with pytest.raises(storage.StorageError, match="client_kwargs.aws_secret_access_key"):
            storage.set_storage_options("s3", {"client_kwargs": {"aws_secret_access_key": "x"}})
    finally:
        storage._OPTIONS.clear()
        storage._OPTIONS.update(saved)


def test_config_storage_section(tmp_path, small_inputs):
    config = load_config(write_config(tmp_path, small_inputs))
    assert config.volumes_url == str(tmp_path / "out" / "volumes.zarr")
    config = load_config(write_config(
        tmp_path, small_inputs, storage={"volumes": "s3://bucket/run/volumes.zarr", "options": {"profile": "lab"}},
        input={"affinities": "s3://bucket/in.zarr/affinities"},
    ))
    assert config.volumes_url == "s3://bucket/run/volumes.zarr"
    assert config.resolve(config.input.affinities) == "s3://bucket/in.zarr/affinities"
    assert config.graph_url.startswith("sqlite:///") and str(tmp_path) in config.graph_url


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"output": "s3://bucket/out"}, "output: .*must be local"),
        ({"storage": {"volumes": "s3://bucket/run"}}, "storage.volumes: .*ending in .zarr"),
        ({"storage": {"options": {"key": "AKIA"}}}, "storage.options: key: credentials are not accepted"),
        ({"storage": {"outputs": {"fragments": {"codec": "lz77"}}}}, "storage.outputs.fragments.codec"),
    ],
)
def test_bad_storage_config(tmp_path, small_inputs, sections, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, small_inputs, **sections))


def test_storage_options_go_to_object_stores_only(tmp_path, small_inputs):
    """An https input beside s3 options: fsspec's http filesystem would choke on endpoint_url."""
    from blockseg.layout import prepare_storage

    config = load_config(write_config(
        tmp_path, small_inputs, storage={"options": {"endpoint_url": "http://127.0.0.1:9"}},
        input={"raw": "https://127.0.0.1:9/in.zarr/raw"},
    ))
    saved = dict(storage._OPTIONS)
    try:
        prepare_storage(config)
        assert "endpoint_url" not in storage.storage_options("https://127.0.0.1:9/in.zarr/raw")
    finally:
        storage._OPTIONS.clear()
        storage._OPTIONS.update(saved)
