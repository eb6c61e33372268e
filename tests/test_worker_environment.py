"""What a worker process of blockseg's own clusters starts with."""

from __future__ import annotations

import os

import numpy as np
import pytest

from blockseg.cluster import MALLOC_ENVIRON, open_client, slurm_cluster_kwargs
from blockseg.config import ClusterConfig


def _allocator_view() -> tuple[dict, int, int]:
    """The worker's allocator variables; bytes a 16 MiB array took by mmap, and the heap's free bytes after it.

    Read from glibc's ``mallinfo2`` (page-fault counts would depend on
    whether the kernel had huge pages to give).
    """
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblkhd
    array = np.ones(2 * 2**20, np.float64)
    mapped = libc.mallinfo2().hblkhd - before
    del array
    kept = libc.mallinfo2().fordblks
    return {name: os.environ.get(name) for name in MALLOC_ENVIRON}, mapped, kept


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc 2.33 or newer (mallinfo2)")
def test_local_workers_keep_freed_block_arrays_on_the_heap():
    from distributed import Client, LocalCluster

    # distributed's own local cluster first: its nanny also leaves its 64 KiB
    # trim threshold in this process's environment, which ours must override
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        [(_, default_mapped, _)] = client.run(_allocator_view).values()
    config = ClusterConfig(local={"workers": 1, "dashboard": False})
    with open_client(config, quiet=True) as client:
        [(environ, mapped, kept)] = client.run(_allocator_view).values()
    assert environ == MALLOC_ENVIRON
    # distributed's default maps every array of more than 128 KiB on its own
    # and unmaps it when freed, so the next block faults its pages in again
    assert default_mapped >= 16 * 2**20
    # ours takes it from the heap and keeps it there for the next block
    assert mapped == 0
    assert kept >= 16 * 2**20


def test_slurm_jobs_export_the_allocator_variables():
    config = ClusterConfig(slurm={"queue": "debug", "cores": 1, "memory": "2GiB", "walltime": "00:10:00"})
    prologue = slurm_cluster_kwargs(config)["job_script_prologue"]
    for name, value in MALLOC_ENVIRON.items():
        assert f"export {name}={value}" in prologue
