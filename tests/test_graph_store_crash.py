"""Check 2 of the graph stores: a writer killed in the middle of a block.

A child process commits one small block, then starts a large one and is
killed with SIGKILL while that commit is under way. Afterwards the store must
hold the small block whole and the large one whole or not at all, and
committing the large block again must complete it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from blockseg.graph import open_store

N_EDGES = 2_000_000

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from blockseg.graph import open_store
    from blockseg.graph.base import BlockOutput, Edges, Nodes
    import blockseg.graph.files as files

    url, n_edges = sys.argv[1], int(sys.argv[2])
    if url.startswith("file://"):
        # hold the writer between writing its temporary file and renaming it:
        # the moment a crash must not make a partial block visible
        real_replace = files.os.replace
        def slow_replace(source, target):
            if str(target).endswith(".npz") and "/1.npz" in str(target):
                print("writing", flush=True)
                time.sleep(60)
            real_replace(source, target)
        files.os.replace = slow_replace
    if url.startswith("postgresql://"):
        # hold the writer inside its transaction, its edges copied, before the done mark
        from blockseg.graph.postgres import PostgresGraphStore
        real_copy = PostgresGraphStore._copy
        def slow_copy(cursor, table, names, columns):
            real_copy(cursor, table, names, columns)
            if table == "edges" and len(columns[0]) > 2:
                print("writing", flush=True)
                time.sleep(60)
        PostgresGraphStore._copy = staticmethod(slow_copy)
    store = open_store(url)
    small = Nodes(np.array([1, 2], np.uint64), np.zeros((2, 3)), np.array([1, 1]))
    store.commit_block("fragments", 0, BlockOutput(nodes=small))
    u = np.arange(1, n_edges + 1, dtype=np.uint64)
    big = Edges(u, u + np.uint64(1), np.linspace(0, 1, n_edges, dtype=np.float32))
    if url.startswith("sqlite"):
        print("writing", flush=True)
    store.commit_block("agglomerate", 1, BlockOutput(edges=big))
    print("finished", flush=True)
    """
)


def _url(backend: str, tmp_path, request) -> str:
    if backend == "postgres":
        server = request.getfixturevalue("postgres")
        return server.url(server.create_database(f"crash_{tmp_path.name[-20:].lower()}"), luts=str(tmp_path / "luts"))
    return f"sqlite:///{tmp_path / 'graph.db'}" if backend == "sqlite" else f"file://{tmp_path / 'graph'}"


@pytest.mark.parametrize("backend", ["sqlite", "files", "postgres"])
def test_killed_writer_leaves_whole_block_or_none(tmp_path, backend, request):
    url = _url(backend, tmp_path, request)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(N_EDGES)], stdout=subprocess.PIPE, text=True
    )
    line = child.stdout.readline().strip()
    assert line == "writing", line
    time.sleep(0.3)  # well inside the commit: inserting 2M rows takes seconds, the rename waits a minute
    assert child.poll() is None, "the writer finished before it could be killed"
    if backend == "postgres":
        # while the writer sits inside its transaction, others see none of the block
        watcher = open_store(url)
        assert watcher.done_blocks("agglomerate") == set()
        assert sum(len(chunk) for chunk in watcher.iter_edges()) == 0
        assert len(watcher.read_edges()) == 0
        watcher.close()
    child.send_signal(signal.SIGKILL)
    child.wait()

    store = open_store(url)
    try:
        assert store.done_blocks("fragments") == {0}
        assert store.read_nodes().ids.tolist() == [1, 2]
        done = store.done_blocks("agglomerate")
        count = sum(len(chunk) for chunk in store.iter_edges())
        # whole or nothing: never a done mark without all rows, never rows without it
        assert (done == {1} and count == N_EDGES) or (done == set() and count == 0), (done, count)

        # a rerun completes the block
        from blockseg.graph.base import BlockOutput, Edges

        u = np.arange(1, 1001, dtype=np.uint64)
        store.commit_block("agglomerate", 1, BlockOutput(edges=Edges(u, u + np.uint64(1), np.zeros(1000, np.float32))))
        assert store.done_blocks("agglomerate") == {1}
        assert sum(len(chunk) for chunk in store.iter_edges()) == 1000
    finally:
        store.close()
