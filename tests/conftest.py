"""Shared fixtures: a small synthetic volume, a local dask cluster, configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from distributed import Client, LocalCluster

from blockseg.config import load_config
from blockseg.demo import write_demo_inputs

from helpers import write_config


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> Path:
    """The demo volume (64 x 192 x 192 at 20 x 10 x 10 nm) in a read-only-by-convention folder."""
    folder = tmp_path_factory.mktemp("inputs")
    write_demo_inputs(folder, shape=(64, 192, 192), seed=0)
    return folder / "input.zarr"


@pytest.fixture(scope="session")
def small_inputs(tmp_path_factory) -> Path:
    """A smaller volume (32 x 128 x 128) for tests that run the pipeline many times."""
    folder = tmp_path_factory.mktemp("small")
    write_demo_inputs(folder, shape=(32, 128, 128), seed=1)
    return folder / "input.zarr"


def _cluster(workers: int) -> LocalCluster:
    return LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
        memory_limit="4GiB",
    )


@pytest.fixture(scope="session")
def client() -> Client:
    """Two single-threaded worker processes on 127.0.0.1, shared by the tests."""
    with _cluster(2) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def client_one_worker() -> Client:
    with _cluster(1) as cluster, Client(cluster) as c:
        yield c


# The tests' PostgreSQL credentials live in a password file named before any
# worker process starts, so every worker (and every restarted one) finds it.
os.environ["PGPASSFILE"] = str(Path(tempfile.gettempdir()) / f"blockseg-tests-{os.getpid()}.pgpass")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for this session (tests/postgres_server.py), or a skip."""
    import postgres_server

    server = postgres_server.start()
    if isinstance(server, str):
        pytest.skip(f"no PostgreSQL server: {server}")
    Path(os.environ["PGPASSFILE"]).write_text(server.pgpass.read_text())
    Path(os.environ["PGPASSFILE"]).chmod(0o600)
    yield server
    server.stop()
    Path(os.environ["PGPASSFILE"]).unlink(missing_ok=True)


@pytest.fixture
def config_writer(tmp_path):
    def make(inputs: Path, **kwargs):
        return load_config(write_config(tmp_path, inputs, **kwargs))

    return make
