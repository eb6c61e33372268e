"""Issue 10 check 1: the pipeline reads and writes ``s3://`` on a local S3 server (moto).

The server binds to 127.0.0.1 on a free port. The runs go through the CLI in a
subprocess, which starts its own dask workers after the test has put the
(fake) credentials into the environment, so the test also sees everything the
run prints and logs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from blockseg import storage  # noqa: E402
from helpers import read_dataset  # noqa: E402

SECRET = "blockseg-test-secret-7f3a9c"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "blockseg-test-key-id",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with one bucket, ``blockseg``; yields its endpoint URL."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("blockseg")
    storage.set_storage_options("s3", {"endpoint_url": endpoint})
    try:
        yield endpoint
    finally:
        server.stop()
        storage._OPTIONS.pop("s3", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _config(folder: Path, affinities: str, ground_truth: str, **storage_section) -> Path:
    config = {
        "input": {"affinities": affinities, "ground_truth": ground_truth},
        "output": "out",
        "block_shape": [640, 640, 640],
        "stages": {"relabel": {"thresholds": [0.5]}},
        "cluster": {"local": {"workers": 2, "dashboard": False}},
        "scheduler": {"progress": False},
    }
    if storage_section:
        config["storage"] = storage_section
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _blockseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def test_s3_run_equals_local_run(tmp_path, small_inputs, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(small_inputs), "blockseg/inputs/input.zarr", recursive=True)
    remote_inputs = "s3://blockseg/inputs/input.zarr"
    volumes = "s3://blockseg/run/volumes.zarr"

    local = _blockseg("run", str(_config(tmp_path / "local", f"{small_inputs}/affinities", f"{small_inputs}/labels")))
    assert local.returncode == 0, local.stderr
    remote_config = _config(
        tmp_path / "remote", f"{remote_inputs}/affinities", f"{remote_inputs}/labels",
        volumes=volumes, options={"endpoint_url": s3_endpoint},
    )
    remote = _blockseg("run", str(remote_config))
    assert remote.returncode == 0, remote.stderr

    # the volumes are in the bucket, not in the local output folder
    assert not (tmp_path / "remote" / "out" / "volumes.zarr").exists()
    assert fs.exists("blockseg/run/volumes.zarr/segmentation/threshold_0.5/zarr.json")
    for name in ("fragments", "segmentation/threshold_0.5"):
        expected = read_dataset(tmp_path / "local" / "out" / "volumes.zarr" / name)
        got = read_dataset(f"{volumes}/{name}")
        np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) > 10
    scores = [json.loads((tmp_path / d / "out" / "scores.json").read_text()) for d in ("local", "remote")]
    assert scores[0] == scores[1]

    # the credentials reach no printed line, log file, local output or stored object
    assert SECRET not in remote.stdout + remote.stderr
    logs = list((tmp_path / "remote" / "out" / "logs").glob("*.log"))
    assert logs, "the run wrote no log files"
    for path in (tmp_path / "remote").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for key in fs.find("blockseg/run"):
        if key.endswith("zarr.json"):
            assert SECRET not in fs.cat(key).decode(), key
    # a second run finds everything done in the bucket and submits nothing
    again = _blockseg("run", str(remote_config))
    assert again.returncode == 0, again.stderr
    summaries = [line for line in again.stdout.splitlines() if " submitted, in " in line]
    assert summaries and all(" 0 submitted" in line for line in summaries), again.stdout


@pytest.mark.parametrize("problem", ["wrong endpoint", "missing bucket", "missing input bucket"])
def test_unusable_storage_is_one_line_before_any_block(tmp_path, small_inputs, s3_endpoint, problem):
    endpoint = s3_endpoint
    volumes = "s3://blockseg/bad/volumes.zarr"
    affinities = f"{small_inputs}/affinities"
    if problem == "wrong endpoint":
        endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
        named = volumes
    elif problem == "missing bucket":
        volumes = "s3://no-such-bucket/run/volumes.zarr"
        named = volumes
    else:
        affinities = "s3://no-such-bucket/input.zarr/affinities"
        named = affinities
    config = _config(tmp_path, affinities, f"{small_inputs}/labels", volumes=volumes, options={"endpoint_url": endpoint})
    start = time.monotonic()
    result = _blockseg("run", str(config), timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    if problem == "wrong endpoint":
        assert "cannot reach" in lines[0]
    else:
        assert "no-such-bucket" in lines[0] and ("does not exist" in lines[0] or "not found" in lines[0])
    # seconds, not botocore's minute of retries (the bound leaves room for interpreter start-up on a busy machine)
    assert elapsed < 30, elapsed
    assert SECRET not in result.stdout + result.stderr
    # nothing ran: no block was written anywhere
    assert not (tmp_path / "out" / "logs").exists()
    if problem != "missing bucket":
        import s3fs

        assert not s3fs.S3FileSystem(endpoint_url=s3_endpoint).exists("blockseg/bad")


def test_credentials_in_config_are_refused(tmp_path, small_inputs):
    from blockseg.config import ConfigError, load_config

    path = _config(
        tmp_path, f"{small_inputs}/affinities", f"{small_inputs}/labels",
        volumes="s3://blockseg/x/volumes.zarr", options={"endpoint_url": "http://127.0.0.1:1", "secret": SECRET},
    )
    with pytest.raises(ConfigError, match="storage.options.*credentials are not accepted") as error:
        load_config(path)
    assert SECRET not in str(error.value)
