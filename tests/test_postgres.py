"""The PostgreSQL graph store in a pipeline: same output as SQLite, workers write, bad input is one line.

Every test runs against the session's throwaway server (tests/postgres_server.py,
fixture ``postgres``), each in a database of its own. The oracle is the
SQLite store, whose single driver writes every block.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from blockseg.config import load_config
from blockseg.graph import StoreError, open_store
from blockseg.graph.postgres import PostgresGraphStore
from blockseg.pipeline import open_run, run_pipeline

from helpers import read_dataset, write_config


def _database(postgres, prefix: str) -> str:
    return postgres.create_database(f"{prefix}_{uuid.uuid4().hex[:10]}")


def _run(config, client):
    run = open_run(config)
    try:
        reports = run_pipeline(run, client)
    finally:
        run.store.close()
    return run, reports


def _cli(args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env=env,
    )


def test_pipeline_on_postgres_equals_sqlite_and_workers_write(tmp_path, small_inputs, client, postgres, monkeypatch):
    """Check 3: 2 workers writing PostgreSQL give the SQLite run's output bit for bit; the driver writes no rows."""
    driver_rows = []
    real_commit = PostgresGraphStore.commit_block

    def spy(self, stage, block_id, output):
        # only the driver process sees this spy; workers run the real method
        driver_rows.append(len(output.nodes or ()) + len(output.edges or ()))
        return real_commit(self, stage, block_id, output)

    monkeypatch.setattr(PostgresGraphStore, "commit_block", spy)
    database = _database(postgres, "pipeline")
    outputs = {}
    for name, graph in (("sqlite", "sqlite:///out/graph.db"), ("postgres", postgres.url(database))):
        folder = tmp_path / name
        folder.mkdir()
        config = load_config(write_config(folder, small_inputs, graph=graph))
        run, reports = _run(config, client)
        outputs[name] = (
            read_dataset(run.fragments_url), read_dataset(run.segmentation_url(0.5)), run.scores,
            [run.store.read_lut(t) for t in config.stages.segments.thresholds],
        )
        # resume: nothing to do on either store
        _, again = _run(config, client)
        assert sum(report.submitted for report in again.values()) == 0
    a, b = outputs["sqlite"], outputs["postgres"]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    for (ids_a, seg_a), (ids_b, seg_b) in zip(a[3], b[3]):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(seg_a, seg_b)
    assert sum(driver_rows) == 0, "the driver committed graph rows; the workers should have"
    # the graph itself equals the SQLite one, row for row
    sqlite = open_store(f"sqlite:///{tmp_path / 'sqlite' / 'out' / 'graph.db'}")
    pg = open_store(postgres.url(database, luts=str(tmp_path / "postgres" / "out" / "luts")))
    try:
        n_a, n_b = sqlite.read_nodes(), pg.read_nodes()
        np.testing.assert_array_equal(n_a.ids, n_b.ids)
        np.testing.assert_array_equal(n_a.centers, n_b.centers)
        np.testing.assert_array_equal(n_a.sizes, n_b.sizes)
        e_a, e_b = sqlite.read_edges(), pg.read_edges()
        assert len(e_a) > 100
        np.testing.assert_array_equal(e_a.u, e_b.u)
        np.testing.assert_array_equal(e_a.v, e_b.v)
        np.testing.assert_array_equal(e_a.scores, e_b.scores)
        assert sqlite.done_blocks("agglomerate") == pg.done_blocks("agglomerate")
        # the LUTs sit beside the run's output
        assert pg.lut_dir == tmp_path / "postgres" / "out" / "luts" and any(pg.lut_dir.iterdir())
    finally:
        sqlite.close()
        pg.close()


def _one_line_refusal(result, *forbidden: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in forbidden:
        assert text not in result.stderr and text not in result.stdout
    return lines[0]


def test_unreachable_database_is_one_line_before_any_work(tmp_path, small_inputs):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, small_inputs, graph=f"postgresql://blockseg@127.0.0.1:{port}/nowhere")
    result = _cli(["run", str(config)], tmp_path)
    line = _one_line_refusal(result)
    assert f"127.0.0.1:{port}/nowhere" in line and "cannot reach the server (connection refused)" in line
    assert not (tmp_path / "out" / "volumes.zarr").exists()


def test_wrong_credentials_are_one_line_without_the_password(tmp_path, small_inputs, postgres):
    database = _database(postgres, "creds")
    config = write_config(tmp_path, small_inputs, graph=postgres.url(database))
    wrong = "not-the-Password-42"
    env = {**os.environ, "PGPASSWORD": wrong}
    line = _one_line_refusal(_cli(["run", str(config)], tmp_path, env), wrong, "s3cret")
    assert "refused the credentials of user 'blockseg'" in line and "PGPASSWORD or ~/.pgpass" in line
    # no password file and no PGPASSWORD: the same refusal
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD",)}
    env["PGPASSFILE"] = str(tmp_path / "no-such-pgpass")
    line = _one_line_refusal(_cli(["run", str(config)], tmp_path, env))
    assert "refused the credentials" in line
    assert not (tmp_path / "out" / "volumes.zarr").exists()


def test_password_in_the_url_is_refused_and_not_printed(tmp_path, small_inputs, postgres):
    secret = "hunter2-Secret"
    config = write_config(tmp_path, small_inputs, graph=f"postgresql://blockseg:{secret}@127.0.0.1:{postgres.port}/x")
    line = _one_line_refusal(_cli(["run", str(config)], tmp_path), secret)
    assert "a password in the URL is refused" in line and "PGPASSWORD" in line
    with pytest.raises(StoreError) as error:
        open_store(f"postgresql://u:{secret}@127.0.0.1:{postgres.port}/x")
    assert secret not in str(error.value)
    with pytest.raises(StoreError, match="password in the URL is refused") as error:
        open_store(f"postgresql://u@127.0.0.1:{postgres.port}/x?password={secret}")
    assert secret not in str(error.value)


def test_missing_database_is_one_line(tmp_path, small_inputs, postgres):
    config = write_config(tmp_path, small_inputs, graph=postgres.url("never_created"))
    line = _one_line_refusal(_cli(["run", str(config)], tmp_path))
    assert "database 'never_created' does not exist" in line and "createdb never_created" in line


def test_database_of_another_config_is_refused(tmp_path, small_inputs, client, postgres):
    """One database, one run: a second config (another output) is refused; so is another block grid."""
    database = _database(postgres, "identity")
    first = tmp_path / "first"
    first.mkdir()
    config = load_config(write_config(first, small_inputs, graph=postgres.url(database)))
    run, _ = _run(config, client)
    reference = read_dataset(run.segmentation_url(0.5))
    second = tmp_path / "second"
    second.mkdir()
    other = write_config(second, small_inputs, graph=postgres.url(database))
    line = _one_line_refusal(_cli(["run", str(other)], second))
    assert "belongs to another run" in line and str(first / "out" / "luts") in line
    assert not (second / "out" / "volumes.zarr").exists()
    # the same output with another block grid: the ledger's identity refuses it
    regrid = write_config(first, small_inputs, graph=postgres.url(database), block_voxels=(16, 64, 64))
    line = _one_line_refusal(_cli(["run", str(regrid)], first))
    assert "holds a run with another block_shape" in line
    # and nothing of the first run was touched
    np.testing.assert_array_equal(read_dataset(run.segmentation_url(0.5)), reference)
    again = open_run(config)
    assert again.store.done_blocks("fragments") and again.store.read_meta()["block_shape"] == list(config.block_shape)
    again.store.close()


# A driver that kills itself (and its cluster: its own process group) inside the
# segments stage: when the first LUT file appears, or at the latest once the
# stage's work is done and before its done mark is written.
KILLED_IN_SEGMENTS = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import blockseg.tasks.segments as segments
    from blockseg.cli import main

    real = segments.distributed_luts

    def kill():
        print("killed in segments", flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def watched(client, store, *args, **kwargs):
        folder = store.lut_dir
        def watch():
            while True:
                if folder.exists() and any(folder.iterdir()):
                    kill()
                time.sleep(0.001)
        threading.Thread(target=watch, daemon=True).start()
        real(client, store, *args, **kwargs)
        kill()

    segments.distributed_luts = watched
    sys.exit(main(["run", sys.argv[1]]))
    """
)


def _luts(store, thresholds):
    return [store.read_lut(t) for t in thresholds]


@pytest.mark.parametrize("backend", ["sqlite", "files", "postgres"])
def test_driver_killed_in_segments_resumes_to_identical_luts(tmp_path, small_inputs, backend, request):
    """Check 4: kill the driver during the segments stage, rerun: the LUTs and segmentation of an undisturbed run."""
    graphs = {"sqlite": lambda: "sqlite:///out/graph.db", "files": lambda: "file://out/graph"}
    if backend == "postgres":
        server = request.getfixturevalue("postgres")
        graphs["postgres"] = lambda: server.url(_database(server, "resume"))
    cluster = {"local": {"workers": 2, "dashboard": False}}
    folders = {}
    for kind in ("fresh", "killed"):
        folders[kind] = tmp_path / kind
        folders[kind].mkdir()
        write_config(folders[kind], small_inputs, graph=graphs[backend](), cluster=cluster)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_SEGMENTS, str(folders["killed"] / "config.yaml")],
        cwd=folders["killed"], capture_output=True, text=True, timeout=600, start_new_session=True,
    )
    assert killed.returncode == -signal.SIGKILL and "killed in segments" in killed.stdout, killed.stderr
    for kind in ("killed", "fresh"):
        result = _cli(["run", str(folders[kind] / "config.yaml")], folders[kind])
        assert result.returncode == 0, result.stderr
    configs = {kind: load_config(folders[kind] / "config.yaml") for kind in folders}
    thresholds = configs["fresh"].stages.segments.thresholds
    stores = {kind: open_store(configs[kind].graph_url) for kind in folders}
    try:
        for (ids_a, seg_a), (ids_b, seg_b) in zip(_luts(stores["fresh"], thresholds), _luts(stores["killed"], thresholds)):
            assert len(ids_a) > 10
            np.testing.assert_array_equal(ids_a, ids_b)
            np.testing.assert_array_equal(seg_a, seg_b)
    finally:
        for store in stores.values():
            store.close()
    for name in ("fragments", "segmentation/threshold_0.5"):
        np.testing.assert_array_equal(
            read_dataset(folders["killed"] / "out" / "volumes.zarr" / name),
            read_dataset(folders["fresh"] / "out" / "volumes.zarr" / name),
        )
    scores = [json.loads((folders[kind] / "out" / "scores.json").read_text()) for kind in ("killed", "fresh")]
    assert scores[0] == scores[1]


def test_a_dropped_connection_is_replaced_on_next_use(tmp_path, postgres):
    """A server restart or idle timeout drops a worker's connection: that commit fails (a retried attempt), the next reconnects."""
    import psycopg

    from blockseg.graph.base import BlockOutput, Edges

    database = _database(postgres, "dropped")
    store = open_store(postgres.url(database, luts=str(tmp_path / "luts")))
    edges = Edges(np.array([1], np.uint64), np.array([2], np.uint64), np.array([0.5], np.float32))
    store.commit_block("agglomerate", 0, BlockOutput(edges=edges))
    postgres.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
    with pytest.raises(psycopg.OperationalError):
        store.commit_block("agglomerate", 1, BlockOutput(edges=edges))
    store.commit_block("agglomerate", 1, BlockOutput(edges=edges))
    assert store.done_blocks("agglomerate") == {0, 1}
    store.close()
