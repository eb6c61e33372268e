"""Bytes, speed and object counts of the demo's outputs with each codec and layout.

The script runs the demo pipeline once (a synthetic volume, blockwise, on a
local dask cluster) to get real fragments, segmentation and affinities, then
writes and reads those three arrays block by block, as the pipeline's stages
do, with each codec (``blosc-zstd``, ``blosc-lz4``, ``zstd``, ``none``),
sharded (one shard per block, inner chunks inside) and unsharded (one object
per inner chunk), on local disk and on a local S3 server (moto on
127.0.0.1, blosc-zstd only).

Figures (printed, and with ``--json PATH`` one flat JSON object):

- ``<codec>_bytes_per_voxel``: stored bytes of all three outputs per voxel of
  the volume (sharded), and ``<codec>_<output>_bytes_per_voxel`` per output,
  plus ``<codec>_affinities_uint8_bytes_per_voxel`` for the affinities stored
  as uint8 (x 255), the predict stage's default output type (the demo's
  float32 affinities carry synthetic noise in every bit and barely compress);
- ``<codec>_write_mvox_per_s`` / ``<codec>_read_mvox_per_s``: voxels of all
  three outputs written / read per second, one thread, sharded, local disk;
  ``unsharded_write_mvox_per_s`` / ``unsharded_read_mvox_per_s`` the same
  with blosc-zstd unsharded;
- ``s3_write_mvox_per_s`` / ``s3_read_mvox_per_s`` (and ``s3_unsharded_*``):
  the same on the local S3 server;
- ``sharded_objects`` / ``unsharded_objects``: objects stored for the three
  outputs here; ``sharded_objects_per_tb`` / ``unsharded_objects_per_tb``:
  the objects the three outputs of a 10^12-voxel run make with the default
  layout (one shard per ``--tb-block`` block) or with unsharded inner chunks.

Usage::

    python benchmarks/storage.py                # demo volume 64 x 192 x 192
    python benchmarks/storage.py --quick        # 32 x 128 x 128
    python benchmarks/storage.py --json figures.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
OUTPUTS = ("fragments", "segmentation", "affinities")
TB_VOXELS = 10**12


def demo_outputs(folder: Path, shape, block, workers: int) -> dict[str, np.ndarray]:
    """Run the demo pipeline and return its fragments, segmentation and (input) affinities."""
    from distributed import Client, LocalCluster

    from blockseg.config import load_config
    from blockseg.demo import DEMO_VOXEL_SIZE, write_demo_inputs
    from blockseg.pipeline import open_run, run_pipeline
    from blockseg.volume import open_volume

    inputs = write_demo_inputs(folder, shape=shape, seed=0)
    config = {
        "input": {"affinities": f"{inputs}/affinities"},
        "output": "out",
        "block_shape": [b * v for b, v in zip(block, DEMO_VOXEL_SIZE)],
        "stages": {"relabel": {"thresholds": [0.5]}},
        "scheduler": {"progress": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = open_run(load_config(path))
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
        silence_logs=logging.CRITICAL,  # shutdown races print tracebacks that say nothing about storage
    )
    with cluster, Client(cluster) as client:
        run_pipeline(run, client)
    run.store.close()

    def read(url):
        volume = open_volume(url)
        return volume.read(volume.roi)

    return {
        "fragments": read(run.fragments_url),
        "segmentation": read(run.segmentation_url(0.5)),
        "affinities": read(f"{inputs}/affinities"),
    }


def _blocks(shape, block):
    """Block slices (z, y, x) tiling ``shape``."""
    ranges = [range(0, s, b) for s, b in zip(shape, block)]
    for z in ranges[0]:
        for y in ranges[1]:
            for x in ranges[2]:
                yield tuple(slice(o, min(o + b, s)) for o, b, s in zip((z, y, x), block, shape))


def write_and_read(container: str, data: dict[str, np.ndarray], codec: str, block, inner, sharded: bool) -> dict:
    """Write each output block by block, read it back block by block; times, bytes and object count."""
    from blockseg import storage
    from blockseg.geometry import Roi
    from blockseg.volume import create_volume

    figures = {"write_s": 0.0, "read_s": 0.0, "voxels": 0, "bytes": {}, "objects": 0}
    for name, array in data.items():
        channels = array.shape[:-3]
        shape = array.shape[-3:]
        roi = Roi((0, 0, 0), shape)
        url = f"{container}/{name}"
        start = time.perf_counter()
        volume = create_volume(
            url, roi, (1, 1, 1), array.dtype, inner, channels,
            shard_shape=block if sharded else None, codec=codec,
        )
        lead = (slice(None),) * len(channels)
        for where in _blocks(shape, block):
            volume.array[lead + where] = array[lead + where]
        figures["write_s"] += time.perf_counter() - start
        start = time.perf_counter()
        for where in _blocks(shape, block):
            back = volume.array[lead + where]
        figures["read_s"] += time.perf_counter() - start
        assert np.array_equal(back, array[lead + where])
        fs, path = storage.filesystem(url)
        sizes = fs.du(path, total=False)
        figures["bytes"][name] = sum(sizes.values())
        figures["objects"] += len(sizes)
        figures["voxels"] += int(np.prod(shape))
    return figures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3():
    """A moto S3 server on 127.0.0.1 with a bucket ``bench``; returns (server, endpoint)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # moto accepts any credentials; real ones must not be needed or sent
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    from blockseg import storage

    storage.set_storage_options("s3", {"endpoint_url": endpoint})
    storage.filesystem("s3://bench")[0].mkdir("bench")
    return server, endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small volume that runs in about a minute")
    parser.add_argument("--shape", type=int, nargs=3, help="volume shape in voxels (z y x)")
    parser.add_argument("--block", type=int, nargs=3, default=[32, 64, 64], help="block = shard shape in voxels")
    parser.add_argument("--inner", type=int, nargs=3, default=[16, 32, 32], help="inner chunk shape in voxels")
    parser.add_argument("--tb-block", type=int, nargs=3, default=[64, 512, 512], help="block of the projected 1 TB run")
    parser.add_argument("--workers", type=int, default=2, help="dask workers for the demo pipeline run")
    parser.add_argument("--no-s3", action="store_true", help="skip the local S3 server")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    shape = tuple(args.shape or ((32, 128, 128) if args.quick else (64, 192, 192)))
    block, inner = tuple(args.block), tuple(args.inner)

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="blockseg-storage-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        data = demo_outputs(tmp, shape, block, args.workers)
        voxels = int(np.prod(shape))
        print(f"demo {shape} ({voxels / 1e6:.2f} Mvoxel), blocks/shards {block}, inner chunks {inner}; "
              f"pipeline {time.perf_counter() - start:.1f} s")

        def record(prefix: str, result: dict) -> None:
            figures[f"{prefix}_write_mvox_per_s"] = result["voxels"] / result["write_s"] / 1e6
            figures[f"{prefix}_read_mvox_per_s"] = result["voxels"] / result["read_s"] / 1e6

        print(f"{'codec':<11} {'layout':<9} {'where':<5} {'B/voxel':>8} {'frag':>6} {'seg':>6} {'affs':>6} "
              f"{'write Mvox/s':>13} {'read Mvox/s':>12} {'objects':>8}")

        def show(codec, layout, where, result):
            per = {n: result["bytes"][n] / voxels for n in OUTPUTS}
            print(f"{codec:<11} {layout:<9} {where:<5} {sum(per.values()):8.3f} {per['fragments']:6.3f} "
                  f"{per['segmentation']:6.3f} {per['affinities']:6.3f} {result['voxels'] / result['write_s'] / 1e6:13.1f} "
                  f"{result['voxels'] / result['read_s'] / 1e6:12.1f} {result['objects']:8d}")

        for codec in CODECS:
            result = write_and_read(str(tmp / f"{codec}.zarr"), data, codec, block, inner, sharded=True)
            figures[f"{codec}_bytes_per_voxel"] = sum(result["bytes"].values()) / voxels
            for name in OUTPUTS:
                figures[f"{codec}_{name}_bytes_per_voxel"] = result["bytes"][name] / voxels
            record(codec, result)
            show(codec, "sharded", "local", result)
            as_uint8 = {"affinities": np.round(data["affinities"] * 255).astype(np.uint8)}
            small = write_and_read(str(tmp / f"{codec}-uint8.zarr"), as_uint8, codec, block, inner, sharded=True)
            figures[f"{codec}_affinities_uint8_bytes_per_voxel"] = small["bytes"]["affinities"] / voxels
            if codec == "blosc-zstd":
                figures["sharded_objects"] = result["objects"]
        plain = write_and_read(str(tmp / "plain.zarr"), data, "blosc-zstd", block, inner, sharded=False)
        record("unsharded", plain)
        figures["unsharded_objects"] = plain["objects"]
        show("blosc-zstd", "unsharded", "local", plain)

        if not args.no_s3:
            server, _ = start_s3()
            try:
                remote = write_and_read("s3://bench/sharded.zarr", data, "blosc-zstd", block, inner, sharded=True)
                record("s3", remote)
                show("blosc-zstd", "sharded", "s3", remote)
                remote_plain = write_and_read("s3://bench/plain.zarr", data, "blosc-zstd", block, inner, sharded=False)
                record("s3_unsharded", remote_plain)
                show("blosc-zstd", "unsharded", "s3", remote_plain)
            finally:
                server.stop()

    # A terabyte run with the default layout: one shard per block and output,
    # plus a zarr.json per array; unsharded, one object per inner chunk.
    from blockseg.layout import default_inner_chunk

    tb_block = tuple(args.tb_block)
    tb_inner = default_inner_chunk(tb_block)
    figures["sharded_objects_per_tb"] = len(OUTPUTS) * (math.ceil(TB_VOXELS / math.prod(tb_block)) + 1)
    figures["unsharded_objects_per_tb"] = len(OUTPUTS) * (math.ceil(TB_VOXELS / math.prod(tb_inner)) + 1)
    tb_bytes = figures["blosc-zstd_bytes_per_voxel"] * TB_VOXELS
    tb_uint8 = tb_bytes + (figures["blosc-zstd_affinities_uint8_bytes_per_voxel"] - figures["blosc-zstd_affinities_bytes_per_voxel"]) * TB_VOXELS
    print(f"1 TB (10^12 voxels) of fragments + segmentation + affinities, blocks {tb_block}: "
          f"{figures['sharded_objects_per_tb']:.3g} objects sharded, {figures['unsharded_objects_per_tb']:.3g} "
          f"unsharded with {tb_inner} chunks; {tb_bytes / 1e12:.2f} TB stored with blosc-zstd "
          f"({tb_uint8 / 1e12:.2f} TB with uint8 affinities)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True))
        print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
