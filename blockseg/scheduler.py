"""Run one stage over a block grid on a dask ``distributed`` client.

The driver feeds blocks to the cluster through a bounded window drawn lazily
from the grid, so it never builds a task graph of all blocks; it skips the
blocks the ledger marks done; and it alone commits each finished block's graph
rows together with its done mark. A block that raises is retried; one that
keeps failing is reported (id, ROI, worker, traceback) once every other block
has finished, and the stage then raises :class:`StageFailed`.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from distributed import Client, wait
from tqdm import tqdm

from blockseg.blocks import Block, BlockGrid
from blockseg.graph.base import BlockOutput, GraphStore

log = logging.getLogger("blockseg")

BlockFunction = Callable[[Block], BlockOutput]


@dataclass
class BlockFailure:
    """A block that failed on every attempt."""

    block_id: int
    roi: str
    worker: str
    attempts: int
    traceback: str

    def describe(self) -> str:
        return (
            f"block {self.block_id} (write ROI {self.roi}) failed {self.attempts} time(s), "
            f"last on {self.worker}:\n{self.traceback}"
        )


@dataclass
class StageReport:
    """What happened when a stage ran."""

    stage: str
    total: int
    skipped: int = 0
    submitted: int = 0
    succeeded: int = 0
    seconds: float = 0.0
    failures: list[BlockFailure] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.stage}: {self.succeeded} block(s) done, {self.skipped} already done, "
            f"{self.submitted} submitted, in {self.seconds:.1f} s"
        )
        if self.failures:
            text += f"; {len(self.failures)} FAILED"
        return text


class StageFailed(RuntimeError):
    """Some blocks of a stage failed on every attempt."""

    def __init__(self, report: StageReport) -> None:
        self.report = report
        lines = [f"stage {report.stage}: {len(report.failures)} of {report.total} block(s) failed"]
        lines += [failure.describe() for failure in report.failures]
        super().__init__("\n".join(lines))


@dataclass
class _Attempt:
    ok: bool
    output: BlockOutput | None
    worker: str
    error: str = ""


START_MARKS = "blockseg-started"


def _run_block(function: BlockFunction, block: Block, start_mark: tuple[str, str] | None = None) -> _Attempt:
    """Run on a worker: never raise, so the driver sees the worker and traceback.

    With ``start_mark`` the block first tells the scheduler it has started,
    so the driver's timeout counts running time, not time in the queue.
    """
    worker = socket.gethostname()
    try:
        from distributed import get_worker

        worker = get_worker().address
    except ValueError:  # not inside a dask worker (e.g. a synchronous test client)
        pass
    if start_mark is not None:
        try:
            from distributed import get_client

            get_client().set_metadata([START_MARKS, *start_mark], True)
        except Exception:  # noqa: BLE001 - without the mark the block only times out later
            pass
    try:
        return _Attempt(True, function(block), worker)
    except Exception:  # noqa: BLE001 - every failure of a block is reported, not raised
        return _Attempt(False, None, worker, traceback.format_exc())


def workers_info(client: Client) -> dict[str, dict]:
    """Every worker's info (newer distributed lists only a few unless asked for all)."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return info.get("workers", {})


def _total_threads(client: Client) -> int:
    threads = sum(w.get("nthreads", 1) for w in workers_info(client).values())
    return max(1, threads)


def _accepts_n_workers(client: Client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def run_stage(
    client: Client,
    stage: str,
    grid: BlockGrid,
    function: BlockFunction,
    store: GraphStore,
    *,
    retries: int = 2,
    window_per_thread: int = 8,
    progress: bool = True,
    block_ids: Iterable[int] | None = None,
    token: str = "",
    block_timeout: float | None = None,
    resources: dict[str, float] | None = None,
) -> StageReport:
    """Run ``function`` on every block of ``grid`` that the ledger does not mark done.

    Parameters
    ----------
    client : distributed.Client
        Where the blocks run.
    stage : str
        The stage name under which done marks and rows are stored.
    grid : BlockGrid
        The blocks.
    function : callable
        ``function(block) -> BlockOutput``; runs on a worker, so it must be
        picklable (a module-level function or a ``functools.partial`` of one).
    store : GraphStore
        Receives each block's output and done mark in one commit.
    retries : int
        How many times a failing block is tried again.
    window_per_thread : int
        Blocks in flight per worker thread.
    block_ids : iterable of int, optional
        Restrict the run to these blocks.
    token : str
        Part of the task keys, so that tasks of a reset stage never collide
        with stale results the scheduler may still hold.
    block_timeout : float, optional
        Seconds of running (from when the driver sees the block start on a
        worker, not from submission) after which a block counts as hung: it
        is cancelled, its worker restarted (a hung thread cannot be stopped
        any other way) and the attempt counts as failed.
    resources : dict, optional
        Worker resources each block needs, e.g. ``{"GPU": 1}``.

    Raises
    ------
    StageFailed
        After all other blocks finished, if some block failed ``retries + 1`` times.
    """
    start = time.perf_counter()
    done = store.done_blocks(stage)
    wanted = range(grid.num_blocks) if block_ids is None else sorted(set(block_ids))
    report = StageReport(stage, total=len(wanted))
    report.skipped = sum(1 for b in wanted if b in done)
    todo: Iterator[int] = (b for b in wanted if b not in done)
    window = window_per_thread * _total_threads(client)
    attempts: dict[int, int] = {}
    bar = tqdm(
        total=len(wanted), initial=report.skipped, desc=stage, unit="block", disable=not progress, leave=True,
        dynamic_ncols=True,
    )

    in_flight: dict = {}
    run_id = uuid.uuid4().hex

    def submit(block_id: int) -> None:
        attempts[block_id] = attempts.get(block_id, 0) + 1
        report.submitted += 1
        key = f"{stage}-{token[:8]}-{block_id}-{attempts[block_id]}"
        mark = (run_id, key) if block_timeout is not None else None
        future = client.submit(
            _run_block, function, grid.block(block_id), mark, key=key, pure=False, retries=0,
            resources=resources or None,
        )
        in_flight[future] = (block_id, None)

    def settle(block_id: int, attempt: _Attempt, refill: bool = True) -> None:
        if attempt.ok:
            assert attempt.output is not None
            store.commit_block(stage, block_id, attempt.output)
            _accumulate(report.stats, attempt.output.stats)
            report.succeeded += 1
            bar.update(1)
        elif attempts[block_id] <= retries:
            log.warning("%s: block %d failed on %s, retrying:\n%s", stage, block_id, attempt.worker, attempt.error)
            submit(block_id)
            return
        else:
            roi = str(grid.write_roi(block_id))
            report.failures.append(BlockFailure(block_id, roi, attempt.worker, attempts[block_id], attempt.error))
            log.error("%s: block %d failed for good on %s:\n%s", stage, block_id, attempt.worker, attempt.error)
            bar.update(1)
        if refill:
            for next_id in _take(todo, 1):
                submit(next_id)

    for block_id in _take(todo, window):
        submit(block_id)
    # With a timeout the loop wakes up now and then to look for hung blocks.
    poll = None if block_timeout is None else max(0.05, min(1.0, block_timeout / 4))
    while in_flight:
        try:
            finished, _ = wait(list(in_flight), timeout=poll, return_when="FIRST_COMPLETED")
        except TimeoutError:
            finished = set()
        finished = sorted(finished, key=lambda f: in_flight[f][0])
        # Refill the window before fetching results, so the workers have the
        # next blocks while the results travel; then fetch them in one call.
        for next_id in _take(todo, len(finished)):
            submit(next_id)
        ready = [f for f in finished if f.status == "finished"]
        attempts_by_future = dict(zip(ready, client.gather(ready))) if ready else {}
        for future in finished:
            block_id, _ = in_flight.pop(future)
            attempt = attempts_by_future.get(future)
            if attempt is None:
                try:
                    attempt = future.result()
                except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: the task took workers down with it
                    attempt = _Attempt(False, None, "unknown (worker lost)", "".join(traceback.format_exception(error)))
            future.release()
            settle(block_id, attempt, refill=False)
        if block_timeout is not None:
            now = time.monotonic()
            marks = client.get_metadata([START_MARKS, run_id], default={})
            for future, (block_id, started) in list(in_flight.items()):
                if started is None:
                    # the clock starts when the driver first sees the block running
                    if future.key in marks:
                        in_flight[future] = (block_id, now)
                    continue
                if now - started > block_timeout and not future.done():
                    del in_flight[future]
                    worker = _abandon(client, future)
                    message = f"block {block_id} did not finish within block_timeout={block_timeout:g} s"
                    settle(block_id, _Attempt(False, None, worker, message))
    bar.close()
    if block_timeout is not None:
        client.set_metadata([START_MARKS, run_id], {})
    report.seconds = time.perf_counter() - start
    log.info(report.summary())
    if report.failures:
        raise StageFailed(report)
    return report


def _processing_on(dask_scheduler, key: str) -> str | None:
    task = dask_scheduler.tasks.get(key)
    return task.processing_on.address if task is not None and task.processing_on is not None else None


def _abandon(client: Client, future) -> str:
    """Cancel a hung block and restart the worker that runs it; return that worker."""
    worker = None
    try:
        worker = client.run_on_scheduler(_processing_on, key=future.key)
    except Exception:  # noqa: BLE001 - the scheduler may already have moved on
        worker = None
    client.cancel(future)
    if worker:
        try:
            client.restart_workers([worker], timeout=120)
        except Exception as error:  # noqa: BLE001 - a worker without a nanny cannot restart
            log.warning("could not restart worker %s after a hung block: %s", worker, error)
    return worker or "unknown"


def _take(iterator: Iterator[int], count: int) -> list[int]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == count:
            break
    return out


def _accumulate(total: dict, stats: dict) -> None:
    for name, value in stats.items():
        if isinstance(value, (int, float)):
            if name.endswith("_max"):
                total[name] = max(total.get(name, value), value)
            else:
                total[name] = total.get(name, 0) + value
