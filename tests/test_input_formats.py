"""Issue 10 check 4: inputs written by other tools (zarr v2, OME-Zarr, N5, precomputed).

Each foreign copy is written with that format's own writer (zarr's v2 format,
``ome-zarr``'s writer, tensorstore's N5 and precomputed drivers) in the axis
order and metadata conventions of that format, and must read back as the same
voxels at the same place in the world, and segment the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockseg.config import load_config
from blockseg.geometry import Roi
from blockseg.pipeline import open_run, run_pipeline
from blockseg.volume import VolumeError, open_volume
from helpers import read_dataset, write_config

VOXEL = (40, 8, 8)
OFFSET = (400, 80, 16)


def _copy_v2(source_url: str, container: Path, voxel_size, offset) -> str:
    """A zarr v2 array with daisy / funlib's ``resolution`` and ``offset`` attributes."""
    data = read_dataset(source_url)
    array = zarr.create_array(
        str(container), name="data", shape=data.shape, chunks=data.shape[:-3] + (16, 32, 32), dtype=data.dtype,
        zarr_format=2, attributes={"resolution": list(voxel_size), "offset": list(offset)},
    )
    array[...] = data
    return f"{container}/data"


def _write_n5(data: np.ndarray, container: Path, voxel_size, offset) -> str:
    """An N5 dataset as Java tools, zarr's N5 store and funlib write it: axes and attributes x first."""
    ts = pytest.importorskip("tensorstore")
    x_first = np.ascontiguousarray(data.T)
    store = ts.open(
        {
            "driver": "n5", "kvstore": {"driver": "file", "path": str(container)}, "path": "data",
            "metadata": {
                "dimensions": list(x_first.shape), "blockSize": [32, 32, 16] + list(x_first.shape[3:]),
                "dataType": str(data.dtype), "compression": {"type": "gzip"},
            },
        },
        create=True,
    ).result()
    store[...] = x_first
    attributes = container / "data" / "attributes.json"
    meta = json.loads(attributes.read_text())
    # one entry per dimension (tensorstore's rule); 1 nm for a channel axis
    channels = [1] * (x_first.ndim - 3)
    meta.update(resolution=list(voxel_size)[::-1] + channels, offset=list(offset)[::-1] + [0] * len(channels))
    attributes.write_text(json.dumps(meta))
    return f"{container}/data"


def _run(folder: Path, affinities: str, ground_truth: str, client):
    folder.mkdir()
    config = load_config(write_config(folder, Path("unused"), input={"affinities": affinities, "ground_truth": ground_truth}))
    run = open_run(config)
    try:
        run_pipeline(run, client)
    finally:
        run.store.close()
    return read_dataset(run.segmentation_url(0.5))


def test_zarr_v2_and_n5_inputs_segment_like_zarr_v3(tmp_path, small_inputs, client):
    pytest.importorskip("tensorstore")
    truth = f"{small_inputs}/labels"
    reference = _run(tmp_path / "v3", f"{small_inputs}/affinities", truth, client)
    v2 = _copy_v2(f"{small_inputs}/affinities", tmp_path / "affinities_v2.zarr", (20, 10, 10), (0, 0, 0))
    assert zarr.open_array(v2, mode="r").metadata.zarr_format == 2
    np.testing.assert_array_equal(_run(tmp_path / "v2", v2, truth, client), reference)
    n5 = _write_n5(read_dataset(f"{small_inputs}/affinities"), tmp_path / "affinities.n5", (20, 10, 10), (0, 0, 0))
    np.testing.assert_array_equal(_run(tmp_path / "n5", n5, truth, client), reference)
    assert len(np.unique(reference)) > 10


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 1000, size=(6, 20, 24), dtype=np.uint32)


def _check_geometry(opened, data: np.ndarray) -> None:
    assert opened.voxel_size == VOXEL
    assert opened.offset == OFFSET
    assert opened.array.shape == data.shape
    np.testing.assert_array_equal(opened.read(opened.roi), data)
    # a ROI in world units lands on the same voxels
    part = Roi((OFFSET[0] + 2 * VOXEL[0], OFFSET[1] + 5 * VOXEL[1], OFFSET[2]), (3 * VOXEL[0], 4 * VOXEL[1], 7 * VOXEL[2]))
    np.testing.assert_array_equal(opened.read(part), data[2:5, 5:9, 0:7])


def test_zarr_v2_geometry_from_funlib_attributes(tmp_path, volume):
    container = tmp_path / "v2.zarr"
    array = zarr.create_array(str(container), name="raw", shape=volume.shape, chunks=(3, 10, 12), dtype=volume.dtype,
                              zarr_format=2, attributes={"resolution": list(VOXEL), "offset": list(OFFSET)})
    array[...] = volume
    _check_geometry(open_volume(f"{container}/raw"), volume)


def test_ome_zarr_geometry_from_multiscales(tmp_path, volume):
    writer = pytest.importorskip("ome_zarr.writer")
    container = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(container), mode="w")
    writer.write_image(
        volume, group, scale_factors=[], axes=list("zyx"), scale=dict(zip("zyx", map(float, VOXEL))),
        axes_units={name: "nanometer" for name in "zyx"},
    )
    # the writer has no offset argument: add the translation the way OME-Zarr spells it
    attrs = group.attrs.asdict()
    level0 = attrs["ome"]["multiscales"][0]["datasets"][0]
    level0["coordinateTransformations"] = [
        t for t in level0["coordinateTransformations"] if t["type"] == "scale"
    ] + [{"type": "translation", "translation": list(map(float, OFFSET))}]
    group.attrs.update(attrs)
    # the image group itself, and its level-0 array through the group's metadata
    _check_geometry(open_volume(str(container)), volume)
    level = zarr.open_group(str(container), mode="r").attrs.asdict()
    from blockseg.formats import ome_multiscales

    path = ome_multiscales(level)[0]["datasets"][0]["path"]
    _check_geometry(open_volume(f"{container}/{path}"), volume)


def test_ome_zarr_units_and_unsupported_transforms(tmp_path):
    from blockseg.formats import FormatError, ome_geometry

    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    attrs = {"ome": {"multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.04, 0.008, 0.008]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.04, 0.016, 0.016]},
                                                     {"type": "translation", "translation": [0, 0, 0.004, 0.004]}]},
    ]}]}}
    assert ome_geometry(attrs, None, "x") == ("0", (40, 8, 8), (0, 0, 0), ("c", "z", "y", "x"))
    assert ome_geometry(attrs, "1", "x") == ("1", (40, 16, 16), (0, 4, 4), ("c", "z", "y", "x"))
    attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [1, 0.04, 0.0085, 0.008]}]
    with pytest.raises(FormatError, match="whole number of nm"):
        ome_geometry(attrs, None, "x")


def test_n5_geometry_x_first(tmp_path, volume):
    url = _write_n5(volume, tmp_path / "volume.n5", VOXEL, OFFSET)
    opened = open_volume(url)
    _check_geometry(opened, volume)
    assert opened.chunk_shape == (16, 32, 32)
    with pytest.raises(Exception, match="inputs only"):
        opened.write(opened.roi, volume)


def test_precomputed_geometry(tmp_path, volume):
    ts = pytest.importorskip("tensorstore")
    folder = tmp_path / "precomputed"
    voxel_offset = [o // v for o, v in zip(OFFSET, VOXEL)][::-1]
    store = ts.open(
        {
            "driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(folder)},
            "multiscale_metadata": {"type": "segmentation", "data_type": "uint32", "num_channels": 1},
            "scale_metadata": {"size": list(volume.shape[::-1]), "resolution": list(VOXEL[::-1]),
                               "voxel_offset": voxel_offset, "encoding": "raw", "chunk_size": [8, 8, 4]},
        },
        create=True,
    ).result()
    # precomputed arrays are (x, y, z, channel) and start at voxel_offset
    store[ts.d[:].translate_to[0]][...] = volume.T[..., np.newaxis]
    _check_geometry(open_volume(f"precomputed://{folder}"), volume)


def test_missing_n5_metadata_is_a_clear_error(tmp_path, volume):
    url = _write_n5(volume, tmp_path / "bare.n5", VOXEL, OFFSET)
    attributes = tmp_path / "bare.n5" / "data" / "attributes.json"
    meta = json.loads(attributes.read_text())
    del meta["resolution"]
    attributes.write_text(json.dumps(meta))
    with pytest.raises(VolumeError, match="no 'resolution'"):
        open_volume(url)
