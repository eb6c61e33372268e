"""Load the compiled kernels on every worker as a run starts, not inside its first block.

The fragments stage's watershed and node counts, and the agglomerate
stage's RAG edges and merge scores, are numba kernels. Loading
them (and importing numba) takes a worker a second or two, compiling them on
a machine that has never run them a few more; paid inside a worker's first
block, it showed up as a slow stage on small volumes. A worker plugin starts
the loading in a background thread as soon as the worker joins, so it
overlaps with the driver's own start-up and earlier stages; a block that
needs the kernels before they are ready simply waits for the same import.
"""

from __future__ import annotations

import asyncio
import threading

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin


def _load() -> None:
    from workers import agglomerate, fragments

    fragments.compile_kernels()
    agglomerate.compile_kernels()


class KernelWarmUp(WorkerPlugin):
    """Start loading the numba kernels in a thread on each worker."""

    name = "blockseg-kernel-warm-up"

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed's Worker
        threading.Thread(target=_load, name=self.name, daemon=True).start()


def warm_up_workers(client: Client) -> None:
    """Register :class:`KernelWarmUp` (idempotent: a plugin of the same name is replaced)."""
    client.register_plugin(KernelWarmUp(), name=KernelWarmUp.name)


async def _finished_loading() -> None:
    # on the worker's event loop: wait in a thread, so heartbeats go on
    for thread in threading.enumerate():
        if thread.name == KernelWarmUp.name:
            await asyncio.to_thread(thread.join, 300)


def wait_for_warm_up(client: Client) -> None:
    """Return once every worker has loaded the kernels.

    Called before the first stage that uses them: the loading overlaps with
    whatever ran before (opening the run, the input check), and what is left
    of it is not counted in that stage's blocks.

    A worker that dies while it is being waited on (a small memory limit,
    a lost node) is not an error here: its nanny's replacement loads the
    kernels again as it joins, and the stage's own retries and reports deal
    with whatever killed it.
    """
    client.run(_finished_loading, on_error="ignore")
