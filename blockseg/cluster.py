"""Where blocks run: a local dask cluster (default) or an existing scheduler.

A local cluster binds to 127.0.0.1 and starts as many single-threaded worker
processes as the machine has cores, because the block functions hold the GIL
in places (waterz, the union-find) and processes scale where threads do not.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from distributed import Client, LocalCluster

from blockseg.config import ClusterConfig

log = logging.getLogger("blockseg")


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def open_client(config: ClusterConfig, quiet: bool = False) -> Iterator[Client]:
    """Start (or connect to) the cluster described by ``config`` and yield a client.

    The cluster is shut down when the block exits, also on an exception or
    Ctrl-C, so no worker outlives the run.
    """
    if config.address:
        client = Client(config.address, timeout="30s")
        try:
            if not quiet:
                log.info("connected to the dask scheduler at %s", config.address)
            yield client
        finally:
            client.close()
        return
    local = config.local
    workers = local.workers or default_workers()
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=local.threads_per_worker,
        processes=local.processes,
        memory_limit=local.memory_limit,
        host="127.0.0.1",
        # the dashboard always binds to loopback; "dashboard: false" only hides the link
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    try:
        if not quiet:
            link = cluster.dashboard_link if local.dashboard else "off"
            log.info("local dask cluster: %d worker(s) x %d thread(s), dashboard %s", workers, local.threads_per_worker, link)
        yield client
    finally:
        client.close()
        cluster.close()
