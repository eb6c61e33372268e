"""Tests of blockseg.volume: geometry attributes, padded reads, writes, URLs, alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from blockseg.geometry import Roi
from blockseg.volume import VolumeError, create_volume, open_volume, split_array_url

VOXEL = (40, 4, 5)
OFFSET = (120, -20, 35)
SHAPE = (3, 5, 6)  # voxels
CHANNELS = (2,)


@pytest.fixture
def volume_and_data(tmp_path):
    """A 2-channel volume at a non-zero offset with an anisotropic voxel size, filled with known data."""
    roi = Roi(OFFSET, tuple(s * v for s, v in zip(SHAPE, VOXEL)))
    url = tmp_path / "run.zarr" / "nested" / "affs"
    volume = create_volume(
        url, roi, VOXEL, np.int16, chunk_shape=(2, 2, 3), channels=CHANNELS, axis_names=("channel", "z", "y", "x")
    )
    data = np.arange(np.prod(CHANNELS + SHAPE), dtype=np.int16).reshape(CHANNELS + SHAPE) + 1
    volume.write(roi, data)
    return volume, data


def _oracle_read(data: np.ndarray, roi: Roi, pad: float) -> np.ndarray:
    """What reading ``roi`` must give, voxel by voxel (roi aligned to VOXEL)."""
    starts = [(o - d) // v for o, d, v in zip(roi.offset, OFFSET, VOXEL)]
    sizes = [s // v for s, v in zip(roi.shape, VOXEL)]
    out = np.full(data.shape[:1] + tuple(sizes), pad, dtype=data.dtype)
    for index in np.ndindex(*sizes):
        source = tuple(st + i for st, i in zip(starts, index))
        if all(0 <= s < n for s, n in zip(source, SHAPE)):
            out[(slice(None),) + index] = data[(slice(None),) + source]
    return out


def test_create_open_round_trip(volume_and_data):
    volume, data = volume_and_data
    reopened = open_volume(volume.url)
    assert reopened.voxel_size == VOXEL
    assert reopened.offset == OFFSET
    assert reopened.axis_names == ("channel", "z", "y", "x")
    assert reopened.channel_shape == CHANNELS
    assert reopened.spatial_shape == SHAPE
    assert reopened.array.shape == CHANNELS + SHAPE
    assert reopened.roi == Roi(OFFSET, (120, 20, 30))
    assert reopened.chunk_shape == (2, 2, 3)
    assert reopened.dtype == np.int16
    assert reopened.token and reopened.token == volume.token
    np.testing.assert_array_equal(reopened.read(reopened.roi), data)

    attrs = dict(reopened.array.attrs)
    assert attrs["voxel_size"] == list(VOXEL)
    assert attrs["offset"] == list(OFFSET)
    assert attrs["axis_names"] == ["channel", "z", "y", "x"]
    (multiscale,) = attrs["multiscales"]
    assert [axis["name"] for axis in multiscale["axes"]] == ["channel", "z", "y", "x"]
    assert [axis["type"] for axis in multiscale["axes"]] == ["channel", "space", "space", "space"]
    (dataset,) = multiscale["datasets"]
    transforms = {t["type"]: t for t in dataset["coordinateTransformations"]}
    assert transforms["scale"]["scale"] == [1.0, 40.0, 4.0, 5.0]
    assert transforms["translation"]["translation"] == [0.0, 120.0, -20.0, 35.0]
    assert list(reopened.array.metadata.dimension_names) == ["channel", "z", "y", "x"]


def test_create_gives_a_fresh_token_each_time(tmp_path):
    roi = Roi((0, 0, 0), (4, 4, 4))
    first = create_volume(tmp_path / "a.zarr" / "x", roi, (1, 1, 1), np.uint8, (2, 2, 2))
    second = create_volume(tmp_path / "a.zarr" / "x", roi, (1, 1, 1), np.uint8, (2, 2, 2))
    assert first.token != second.token
    assert open_volume(tmp_path / "a.zarr" / "x").token == second.token


def test_default_axis_names_without_channels(tmp_path):
    volume = create_volume(tmp_path / "a.zarr" / "labels", Roi((0, 0, 0), (8, 8, 8)), (2, 2, 2), np.uint64, (2, 2, 2))
    assert open_volume(volume.url).axis_names == ("z", "y", "x")
    assert open_volume(volume.url).channel_shape == ()


def test_create_rejects_roi_off_the_voxel_grid(tmp_path):
    with pytest.raises(ValueError, match="not aligned"):
        create_volume(tmp_path / "a.zarr" / "x", Roi((10, 0, 0), (80, 8, 8)), (40, 4, 4), np.uint8, (1, 1, 1))


@pytest.mark.parametrize(
    "offset_vox, shape_vox",
    [
        ((-2, -1, -3), (4, 3, 5)),  # sticks out below on every axis
        ((1, 3, 4), (4, 4, 4)),  # sticks out above
        ((-1, 0, 0), (5, 5, 6)),  # larger than the data on z only
        ((0, 0, 0), (3, 5, 6)),  # exactly the data
        ((1, 1, 1), (1, 2, 3)),  # strictly inside
        ((5, 0, 0), (2, 2, 2)),  # wholly outside
    ],
)
def test_read_pads_outside_the_data(volume_and_data, offset_vox, shape_vox):
    volume, data = volume_and_data
    roi = Roi(
        tuple(o + i * v for o, i, v in zip(OFFSET, offset_vox, VOXEL)),
        tuple(s * v for s, v in zip(shape_vox, VOXEL)),
    )
    result = volume.read(roi, pad_value=-7)
    assert result.shape == CHANNELS + shape_vox
    assert result.dtype == np.int16
    np.testing.assert_array_equal(result, _oracle_read(data, roi, -7))


def test_read_matches_manual_slicing_of_a_padded_array(volume_and_data):
    volume, data = volume_and_data
    # independent of _oracle_read: pad the full array by 2 voxels and slice it
    padded = np.pad(data, ((0, 0), (2, 2), (2, 2), (2, 2)), constant_values=99)
    roi = Roi((OFFSET[0] - 2 * VOXEL[0], OFFSET[1] + VOXEL[1], OFFSET[2] + 4 * VOXEL[2]), (3 * 40, 3 * 4, 4 * 5))
    expected = padded[:, 0:3, 3:6, 6:10]
    np.testing.assert_array_equal(volume.read(roi, pad_value=99), expected)


def test_read_snaps_unaligned_roi_outwards(volume_and_data):
    volume, data = volume_and_data
    roi = Roi((OFFSET[0] + 1, OFFSET[1] + 1, OFFSET[2] + 1), (38, 6, 3))
    snapped = roi.snap(VOXEL, "grow")
    assert snapped == Roi(OFFSET, (40, 8, 5))
    np.testing.assert_array_equal(volume.read(roi), data[:, 0:1, 0:2, 0:1])


def test_write_inside_lands_in_the_right_voxels(volume_and_data):
    volume, data = volume_and_data
    roi = Roi((OFFSET[0] + 40, OFFSET[1] + 8, OFFSET[2] + 15), (80, 8, 15))
    patch = np.full((2, 2, 2, 3), -1, np.int16)
    volume.write(roi, patch)
    expected = data.copy()
    expected[:, 1:3, 2:4, 3:6] = -1
    np.testing.assert_array_equal(open_volume(volume.url).read(volume.roi), expected)


@pytest.mark.parametrize(
    "roi",
    [
        Roi((OFFSET[0] - 40, OFFSET[1], OFFSET[2]), (80, 4, 5)),  # partly below
        Roi((OFFSET[0], OFFSET[1], OFFSET[2] + 25), (40, 4, 10)),  # partly above
        Roi((1000, 1000, 1000), (40, 4, 5)),  # wholly outside
    ],
)
def test_write_outside_the_data_raises(volume_and_data, roi):
    volume, data = volume_and_data
    shape = CHANNELS + tuple(s // v for s, v in zip(roi.shape, VOXEL))
    with pytest.raises(VolumeError, match="outside the data"):
        volume.write(roi, np.zeros(shape, np.int16))
    np.testing.assert_array_equal(volume.read(volume.roi), data)  # nothing was written


# ---------------------------------------------------------------------------
# URLs and opening
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("/data/run.zarr/volumes/affs", ("/data/run.zarr", "volumes/affs")),
        ("run.zarr/affs", ("run.zarr", "affs")),
        ("/data/run.zarr/affs/", ("/data/run.zarr", "affs")),
        ("s3://bucket/prefix/run.zarr/raw/s0", ("s3://bucket/prefix/run.zarr", "raw/s0")),
        ("/a.zarr/b.zarr/c", ("/a.zarr", "b.zarr/c")),  # the first .zarr component is the container
        (Path("/data/run.zarr/labels"), ("/data/run.zarr", "labels")),
    ],
)
def test_split_array_url(url, expected):
    assert split_array_url(url) == expected


@pytest.mark.parametrize("url", ["/data/run.zarr", "/data/run.zarr/", "/data/run/affs", "affs", "/data/run.zarrx/a"])
def test_split_array_url_errors(url):
    with pytest.raises(VolumeError) as info:
        split_array_url(url)
    assert url.rstrip("/") in str(info.value)


def test_open_missing_dataset_names_the_url(volume_and_data):
    volume, _ = volume_and_data
    container, _ = split_array_url(volume.url)
    for url in (f"{container}/missing", f"{container}/nested", f"{container}/nested/affs/deeper"):
        with pytest.raises(VolumeError) as info:
            open_volume(url)
        assert url in str(info.value)


def test_open_missing_container_names_the_url(tmp_path):
    url = f"{tmp_path}/absent.zarr/affs"
    with pytest.raises(VolumeError) as info:
        open_volume(url)
    assert url in str(info.value)


def test_open_reads_resolution_and_rejects_missing_voxel_size(tmp_path):
    container = str(tmp_path / "foreign.zarr")
    array = zarr.create_array(container, name="raw", shape=(2, 4, 4), chunks=(2, 2, 2), dtype="uint8")
    array.attrs.update({"resolution": [8, 4, 4], "offset": [16, 0, 4]})
    volume = open_volume(f"{container}/raw")
    assert volume.voxel_size == (8, 4, 4)
    assert volume.offset == (16, 0, 4)
    assert volume.roi == Roi((16, 0, 4), (16, 16, 16))
    bare = zarr.create_array(container, name="bare", shape=(2, 2), chunks=(2, 2), dtype="uint8")
    assert bare.shape == (2, 2)
    with pytest.raises(VolumeError, match="voxel_size") as info:
        open_volume(f"{container}/bare")
    assert f"{container}/bare" in str(info.value)


# ---------------------------------------------------------------------------
# write alignment
# ---------------------------------------------------------------------------


def test_is_write_aligned(tmp_path):
    # 4 x 20 x 19 voxels of 20 x 10 x 10 nm at offset (40, 30, -80); chunks are 40 x 80 x 80 nm,
    # so along y the chunk grid is 30, 110, 190 (data end 230) and not the world's 0, 80, 160
    data_roi = Roi((40, 30, -80), (80, 200, 190))
    volume = create_volume(tmp_path / "a.zarr" / "seg", data_roi, (20, 10, 10), np.uint64, (2, 8, 8))
    assert volume.is_write_aligned(data_roi)
    assert volume.is_write_aligned(Roi((40, 30, -80), (40, 80, 80)))
    assert volume.is_write_aligned(Roi((80, 110, 0), (40, 80, 80)))
    # partial last chunks are fine where they end at the data end
    assert volume.is_write_aligned(Roi((80, 190, 80), (40, 40, 30)))
    assert volume.is_write_aligned(Roi((40, 110, 0), (80, 120, 110)))
    # the chunk grid starts at the data offset, not at the world origin
    assert not volume.is_write_aligned(Roi((40, 80, -80), (40, 80, 80)))
    # ends inside a chunk that is not the last
    assert not volume.is_write_aligned(Roi((40, 30, -80), (40, 80, 40)))
    assert not volume.is_write_aligned(Roi((40, 30, -80), (20, 80, 80)))
    assert not volume.is_write_aligned(Roi((40, 110, 0), (80, 100, 110)))
    # not even voxel aligned
    assert not volume.is_write_aligned(Roi((40, 30, -75), (40, 80, 80)))
