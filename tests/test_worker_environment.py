"""What a worker process of blockseg's own clusters starts with."""

from __future__ import annotations

import os
import resource

import numpy as np

from blockseg.cluster import MALLOC_ENVIRON, open_client, slurm_cluster_kwargs
from blockseg.config import ClusterConfig


def _allocator_view() -> tuple[dict, int]:
    """The worker's allocator variables, and its page faults over ten 16 MiB arrays allocated and freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        array = np.empty(2 * 2**20, np.float64)
        array[::512] = 1.0  # touch every page
        del array
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {name: os.environ.get(name) for name in MALLOC_ENVIRON}, faults


def test_local_workers_keep_freed_block_arrays_instead_of_faulting_them_in_again():
    from distributed import Client, LocalCluster

    # distributed's own local cluster first: its nanny also leaves its 64 KiB
    # trim threshold in this process's environment, which ours must override
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        [(_, default_faults)] = client.run(_allocator_view).values()
    config = ClusterConfig(local={"workers": 1, "dashboard": False})
    with open_client(config, quiet=True) as client:
        [(environ, faults)] = client.run(_allocator_view).values()
    assert environ == MALLOC_ENVIRON
    # distributed's default returns each freed array to the OS, so the next
    # one faults its pages in again (about 5,000 faults here); ours reuses the heap
    assert faults * 4 < default_faults, (faults, default_faults)


def test_slurm_jobs_export_the_allocator_variables():
    config = ClusterConfig(slurm={"queue": "debug", "cores": 1, "memory": "2GiB", "walltime": "00:10:00"})
    prologue = slurm_cluster_kwargs(config)["job_script_prologue"]
    for name, value in MALLOC_ENVIRON.items():
        assert f"export {name}={value}" in prologue
