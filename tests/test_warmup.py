"""The kernel warm-up wait: every worker has the kernels afterwards; a worker dying meanwhile is no error."""

from __future__ import annotations

import os
import threading
import time

from blockseg.cluster import open_client
from blockseg.config import ClusterConfig
from blockseg.warmup import KernelWarmUp, wait_for_warm_up, warm_up_workers


def _kernels_loaded() -> bool:
    import sys

    return "workers.fragments" in sys.modules and "workers.agglomerate" in sys.modules


def _die_while_loading() -> None:
    # pose as the warm-up thread, so the wait joins it, and take the process down meanwhile
    def die() -> None:
        time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=die, name=KernelWarmUp.name, daemon=True).start()


def _cluster(workers: int) -> ClusterConfig:
    return ClusterConfig(local={"workers": workers, "memory_limit": "1GiB", "dashboard": False})


def test_every_worker_has_the_kernels_after_the_wait():
    with open_client(_cluster(2), quiet=True) as client:
        warm_up_workers(client)
        wait_for_warm_up(client)
        loaded = client.run(_kernels_loaded)
    assert len(loaded) == 2 and all(loaded.values()), loaded


def test_a_worker_dying_during_the_wait_does_not_end_the_run():
    """The CI failure of 2026-12-06: a 250 MiB worker died while the wait was broadcast to it."""
    with open_client(_cluster(2), quiet=True) as client:
        warm_up_workers(client)
        wait_for_warm_up(client)
        victim = sorted(client.scheduler_info()["workers"])[0]
        client.run(_die_while_loading, workers=[victim])
        start = time.monotonic()
        wait_for_warm_up(client)  # raised CommClosedError before
        assert time.monotonic() - start < 60
        # the nanny brings a worker back, and the registered plugin loads the kernels as it joins
        deadline = time.monotonic() + 60
        while True:
            loaded = client.run(_kernels_loaded, on_error="ignore")
            if (len(loaded) == 2 and all(loaded.values())) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert victim not in loaded
    assert len(loaded) == 2 and all(loaded.values()), loaded
