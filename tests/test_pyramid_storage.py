"""Issue 10: the downsample stage and ``blockseg view`` on object storage (a local moto S3 server).

One module fixture runs the same pipeline twice, once on the local
filesystem and once with inputs and volumes in the bucket; the pyramids must
agree exactly, carry the layout ``storage.outputs`` asks for, and ``blockseg
view`` must hand the remote layers to the viewers by their own URL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402
from zarr.codecs import BloscCodec, ZstdCodec  # noqa: E402

from blockseg import storage  # noqa: E402
from blockseg.config import load_config  # noqa: E402
from blockseg.pipeline import open_run, run_pipeline  # noqa: E402
from blockseg.pyramid import level_layout  # noqa: E402
from blockseg.view import find_layers, neuroglancer_state, parse_neuroglancer_link  # noqa: E402
from helpers import write_config  # noqa: E402
from test_object_storage import CREDENTIALS, _free_port  # noqa: E402

VOXEL = (20, 10, 10)
BLOCK = (16, 64, 64)
ROI_VOXELS = (16, 128, 128)  # 1 x 2 x 2 blocks: four blocks write every level
TOTALS = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]  # levels: 2 for 20 x 10 x 10 nm
NAMES = ["raw", "affinities", "fragments", "segmentation/threshold_0.5", "ground_truth"]
OUTPUTS = {
    "fragments": {"codec": "zstd"},
    "segmentation": {"shard_shape": [8, 32, 32], "chunk_shape": [4, 16, 16]},
    "affinities": {"sharded": False},
    "raw": {"codec": "blosc-lz4"},
}
# (chunks, shards) per level, by hand from level_layout's rule: shards scale with F_k while
# the level's block stays a whole number of them; unsharded levels are one level block per chunk
EXPECTED_LAYOUT = {
    "fragments": [((16, 64, 64), (16, 64, 64)), ((16, 32, 32), (16, 32, 32)), ((8, 16, 16), (8, 16, 16))],
    "segmentation/threshold_0.5": [((4, 16, 16), (8, 32, 32)), ((4, 16, 16), (8, 16, 16)), ((4, 8, 8), (4, 8, 8))],
    "affinities": [((16, 64, 64), None), ((16, 32, 32), None), ((8, 16, 16), None)],
}
EXPECTED_CODEC = {"fragments": ZstdCodec, "raw": BloscCodec, "segmentation/threshold_0.5": BloscCodec}

# moto keeps its buckets in the process: a bucket of our own, so the order of the test modules does not matter
BUCKET = "blockseg-pyramids"
BUCKET_INPUTS = f"{BUCKET}/inputs/input.zarr"
BUCKET_VOLUMES = f"{BUCKET}/run/volumes.zarr"


def _write(folder: Path, inputs: str, endpoint: str | None, volumes: str = BUCKET_VOLUMES) -> Path:
    sections = {
        "input__raw": f"{inputs}/raw",
        "roi": {"offset": [0, 0, 0], "shape": [s * v for s, v in zip(ROI_VOXELS, VOXEL)]},
        "stages__downsample": {"levels": 2, "datasets": ["raw", "affinities", "fragments", "segmentation", "ground_truth"]},
        "storage__outputs": OUTPUTS,
    }
    if endpoint is not None:
        sections["storage__volumes"] = f"s3://{volumes}"
        sections["storage__options"] = {"endpoint_url": endpoint}
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, inputs, block_voxels=BLOCK, **sections)  # type: ignore[arg-type]  (a URL stays a str)


def _run(path: Path, client) -> None:
    run = open_run(load_config(path))
    try:
        run_pipeline(run, client)
    finally:
        run.store.close()


@pytest.fixture(scope="module")
def s3_endpoint(monkeypatch_module):
    """A moto S3 server on 127.0.0.1 with the bucket ``BUCKET``; gives its endpoint URL."""
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    for key, value in CREDENTIALS.items():
        monkeypatch_module.setenv(key, value)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    monkeypatch_module.setitem(storage._OPTIONS, "s3", {"endpoint_url": endpoint})
    try:
        yield endpoint
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def s3_client(s3_endpoint):
    """Two worker processes started after the server's (fake) credentials are in the environment.

    The session's shared cluster may predate them; these workers inherit
    them, as the workers of a real run inherit the user's.
    """
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit="2GiB"
    ) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_inputs, s3_endpoint, s3_client):
    """The same config run locally and with inputs + volumes on S3; gives (local config, remote config, endpoint)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(small_inputs), BUCKET_INPUTS, recursive=True)
    folder = tmp_path_factory.mktemp("pyramid-storage")
    local = _write(folder / "local", str(small_inputs), None)
    remote = _write(folder / "remote", f"s3://{BUCKET_INPUTS}", s3_endpoint)
    _run(local, s3_client)
    _run(remote, s3_client)
    return local, remote, s3_endpoint


def _level(volumes: str, name: str, level: int) -> zarr.Array:
    return zarr.open_array(storage.zarr_store(volumes, read_only=True), path=f"pyramids/{name}/s{level}", mode="r")


@pytest.mark.parametrize("name", NAMES)
def test_s3_levels_equal_local_levels(runs, name):
    local, remote, _ = runs
    assert not (remote.parent / "out" / "volumes.zarr").exists()  # the pyramids went to the bucket
    local_volumes = str(local.parent / "out" / "volumes.zarr")
    for level, total in enumerate(TOTALS):
        expected = _level(local_volumes, name, level)
        got = _level(f"s3://{BUCKET_VOLUMES}", name, level)
        assert got.shape == expected.shape
        assert got.shape[-3:] == tuple(-(-s // f) for s, f in zip(ROI_VOXELS, total))
        assert (got.chunks, got.shards, got.dtype) == (expected.chunks, expected.shards, expected.dtype)
        np.testing.assert_array_equal(got[...], expected[...], err_msg=f"{name} s{level}")
    if name != "affinities":
        assert len(np.unique(got[...])) > 1


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYOUT))
def test_levels_follow_the_source_layout(runs, name):
    _, remote, _ = runs
    for level, (chunks, shards) in enumerate(EXPECTED_LAYOUT[name]):
        array = _level(f"s3://{BUCKET_VOLUMES}", name, level)
        channels = array.shape[:-3]
        assert array.chunks == channels + chunks
        assert array.shards == (None if shards is None else channels + shards)


@pytest.mark.parametrize("name", sorted(EXPECTED_CODEC))
def test_levels_keep_the_source_codec(runs, name):
    _, remote, _ = runs
    for level in range(len(TOTALS)):
        compressors = _level(f"s3://{BUCKET_VOLUMES}", name, level).compressors
        assert len(compressors) == 1 and isinstance(compressors[0], EXPECTED_CODEC[name])
    if name == "raw":
        assert compressors[0].cname.value == "lz4"


def test_s3_objects_are_shards_plus_metadata(runs):
    """The segmentation levels are sharded: one object per shard and level, plus zarr.json."""
    import s3fs

    _, _, endpoint = runs
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    for level, (_, shards) in enumerate(EXPECTED_LAYOUT["segmentation/threshold_0.5"]):
        keys = fs.find(f"{BUCKET_VOLUMES}/pyramids/segmentation/threshold_0.5/s{level}", refresh=True)
        shape = [-(-s // f) for s, f in zip(ROI_VOXELS, TOTALS[level])]
        shard_count = int(np.prod([-(-n // s) for n, s in zip(shape, shards)]))
        assert len(keys) == shard_count + 1, (level, keys[:5])


@pytest.mark.parametrize("name", NAMES)
def test_ome_zarr_reader_opens_the_local_pyramids(runs, name):
    local, _, _ = runs
    volumes = local.parent / "out" / "volumes.zarr"
    node = list(Reader(parse_url(str(volumes / "pyramids" / name)))())[0]
    assert len(node.data) == len(TOTALS)
    for level, (data, total) in enumerate(zip(node.data, TOTALS)):
        assert data.shape[-3:] == tuple(-(-s // f) for s, f in zip(ROI_VOXELS, total))
        np.testing.assert_array_equal(np.asarray(data), _level(str(volumes), name, level)[...])


@pytest.mark.parametrize(
    "source, block, total, expected",
    [
        # unsharded source: one level block per chunk
        ({"chunk_shape": (16, 64, 64), "shard_shape": None, "codec": "zstd", "level": 5}, (16, 64, 64), (2, 4, 4),
         {"chunk_shape": (8, 16, 16), "shard_shape": None, "codec": "zstd", "level": 5}),
        # shards of half a block scale with the level; the inner chunk shrinks where it no longer fits
        ({"chunk_shape": (4, 32, 32), "shard_shape": (8, 64, 64), "codec": "blosc-zstd", "level": None}, (16, 64, 64),
         (2, 4, 4), {"chunk_shape": (4, 16, 16), "shard_shape": (4, 16, 16), "codec": "blosc-zstd", "level": None}),
        # a shard extent (6) that the factor (4) does not divide: plain chunks of the level block
        ({"chunk_shape": (6, 32, 32), "shard_shape": (6, 64, 64), "codec": "blosc-lz4", "level": None}, (12, 64, 64),
         (4, 2, 2), {"chunk_shape": (3, 32, 32), "shard_shape": None, "codec": "blosc-lz4", "level": None}),
        # the level's block (8) is no whole number of the scaled shard (shard 24 / 2 = 12): plain chunks
        ({"chunk_shape": (8, 8, 8), "shard_shape": (24, 8, 8), "codec": "zstd", "level": None}, (16, 8, 8),
         (2, 1, 1), {"chunk_shape": (8, 8, 8), "shard_shape": None, "codec": "zstd", "level": None}),
    ],
)
def test_level_layout_by_hand(source, block, total, expected):
    assert level_layout(source, block, total) == expected


# -- blockseg view --------------------------------------------------------------------------


def test_view_gives_remote_layers_their_own_url(runs):
    """``blockseg view`` on the S3 run: every layer remote, so nothing is served and the command returns."""
    _, remote, endpoint = runs
    result = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "view", str(remote), "--no-browser"],
        capture_output=True, text=True, timeout=120, cwd=remote.parent,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not any(line.startswith("serving ") for line in lines)
    notes = [line for line in lines if line.startswith("remote layers ")]
    assert len(notes) == 1 and "need access" in notes[0]
    state = parse_neuroglancer_link(next(line for line in lines if line.startswith("neuroglancer: ")).split(" ", 1)[1])
    sources = {layer["name"]: layer["source"] for layer in state["layers"]}
    assert set(sources) == {"raw", "affinities", "fragments", "segmentation_0.5", "ground_truth"}
    # a browser cannot be told about a custom endpoint: it gets the path-style address on it
    expected = {
        "raw": f"{endpoint}/{BUCKET_VOLUMES}/pyramids/raw/",
        "affinities": f"{endpoint}/{BUCKET_VOLUMES}/pyramids/affinities/",
        "fragments": f"{endpoint}/{BUCKET_VOLUMES}/pyramids/fragments/",
        "segmentation_0.5": f"{endpoint}/{BUCKET_VOLUMES}/pyramids/segmentation/threshold_0.5/",
        "ground_truth": f"{endpoint}/{BUCKET_VOLUMES}/pyramids/ground_truth/",
    }
    assert sources == {name: f"zarr3://{url}" for name, url in expected.items()}
    for name, url in expected.items():
        assert f"  layer {name} " in result.stdout and f"zarr3://{url}" in result.stdout
    assert "blockseg view: every layer is remote" in lines[-1]


def test_view_without_endpoint_names_the_s3_url(runs, monkeypatch):
    """Without an endpoint_url, neuroglancer gets ``zarr3://s3://bucket/...`` (its own S3 support)."""
    from blockseg.view import browser_url

    _, _, endpoint = runs
    monkeypatch.setitem(storage._OPTIONS, "s3", {})
    assert browser_url("s3://bucket/run/volumes.zarr/fragments") == "s3://bucket/run/volumes.zarr/fragments"
    monkeypatch.setitem(storage._OPTIONS, "s3", {"endpoint_url": endpoint})
    assert browser_url("s3://bucket/run/volumes.zarr/fragments") == f"{endpoint}/bucket/run/volumes.zarr/fragments"


def test_view_mixes_served_and_remote_layers(runs, small_inputs):
    """Volumes on S3, inputs local: the inputs are served from 127.0.0.1, the outputs named by URL."""
    local, remote, endpoint = runs
    mixed = _write(remote.parent.parent / "mixed", str(small_inputs), endpoint)
    config = load_config(mixed)
    layers, mounts = find_layers(config)
    state = neuroglancer_state(layers, "http://127.0.0.1:8000")
    sources = {layer["name"]: layer["source"] for layer in state["layers"]}
    # the input pyramids are in the bucket too (the downsample stage wrote them there)
    assert sources["fragments"] == f"zarr3://{endpoint}/{BUCKET_VOLUMES}/pyramids/fragments/"
    assert sources["raw"] == f"zarr3://{endpoint}/{BUCKET_VOLUMES}/pyramids/raw/"
    assert all(isinstance(source, str) for source in sources.values())  # pyramids carry their own transforms
    assert [layer.remote for layer in layers] == [True] * len(layers)
    # volumes without pyramids: the local inputs are served, the outputs in the bucket named by URL
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.copy(f"{BUCKET_VOLUMES}/fragments", f"{BUCKET}/no-pyramids/volumes.zarr/fragments", recursive=True)
    fs.pipe(f"{BUCKET}/no-pyramids/volumes.zarr/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')
    bare = _write(remote.parent.parent / "bare", str(small_inputs), endpoint, volumes=f"{BUCKET}/no-pyramids/volumes.zarr")
    layers, mounts = find_layers(load_config(bare))
    assert {layer.name: layer.remote for layer in layers} == {
        "raw": False, "affinities": False, "fragments": True, "ground_truth": False,
    }
    state = neuroglancer_state(layers, "http://127.0.0.1:8000")
    sources = {layer["name"]: layer["source"] for layer in state["layers"]}
    assert sources["raw"]["url"] == "zarr3://http://127.0.0.1:8000/inputs/input.zarr/raw/"
    assert sources["fragments"]["url"] == f"zarr3://{endpoint}/{BUCKET}/no-pyramids/volumes.zarr/fragments/"
    assert mounts == {"inputs/input.zarr": small_inputs.resolve()}


def test_napari_command_opens_remote_layers_by_url(runs):
    """Run the printed napari script against a stand-in napari: it reads the levels from the bucket."""
    from blockseg.view import napari_command

    local, remote, endpoint = runs
    layers, _ = find_layers(load_config(remote))
    script = napari_command(layers).removeprefix('python -c "').removesuffix('"')
    assert f"zarr.open_array('s3://{BUCKET_VOLUMES}/pyramids/fragments/s2', mode='r', storage_options=" in script
    added: dict[str, list] = {}
    fake = types.ModuleType("napari")
    fake.Viewer = lambda: types.SimpleNamespace(
        add_image=lambda data, name, **kw: added.__setitem__(name, data),
        add_labels=lambda data, name, **kw: added.__setitem__(name, data),
    )
    fake.run = lambda: None
    saved = sys.modules.get("napari")
    sys.modules["napari"] = fake
    try:
        exec(compile(script, "napari-command", "exec"), {})
    finally:
        if saved is None:
            sys.modules.pop("napari")
        else:
            sys.modules["napari"] = saved
    assert set(added) == {"raw", "affinities", "fragments", "segmentation_0.5", "ground_truth"}
    local_volumes = str(local.parent / "out" / "volumes.zarr")
    for name, path in [("fragments", "fragments"), ("segmentation_0.5", "segmentation/threshold_0.5")]:
        levels = added[name]
        assert len(levels) == len(TOTALS)
        for level, array in enumerate(levels):
            np.testing.assert_array_equal(array[...], _level(local_volumes, path, level)[...])
