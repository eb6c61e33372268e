"""Run one stage over a block grid on a dask ``distributed`` client.

The driver feeds blocks to the cluster through a bounded window drawn lazily
from the grid, so it never builds a task graph of all blocks, and it skips the
blocks the ledger marks done. A block's graph rows and its done mark reach the
store in one commit: made by the worker itself where the store takes
concurrent writers (``store.workers_write``: the file and PostgreSQL stores),
so the driver only learns that the block is done and never holds its rows;
made by the driver for SQLite, which keeps a single writer. A block that raises is retried; one that
keeps failing is reported (id, ROI, worker, traceback) once every other block
has finished, and the stage then raises :class:`StageFailed`.

A block that kills its worker (memory limit, a segfault in a native library)
is one failed attempt like a block that raises: the cluster surfaces each
death at once (``distributed.scheduler.allowed-failures: 0``, which
:func:`blockseg.cluster.open_client` sets), the report says why the worker
died, and blocks that only waited on the dead worker are resubmitted without
counting an attempt. A cluster with no usable worker left ends the stage
with :class:`NoWorkers` instead of waiting forever.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from distributed import Client, wait
from distributed.scheduler import KilledWorker

from blockseg.blocks import Block, BlockGrid
from blockseg.graph.base import BlockOutput, GraphStore
from blockseg.terminal import progress_bar
from blockseg.stage_errors import (  # noqa: F401
    RESOURCE_ERRNOS,
    BlockFailure,
    NoWorkers,
    ResourceError,
    StageFailed,
    StageReport,
    resource_problem,
)
from blockseg.worker_watch import (  # noqa: F401
    WATCH_INTERVAL,
    _abandon,
    _accepts_n_workers,
    _executing,
    _last_line,
    _mib,
    _processing_on,
    _total_threads,
    _WorkerDeaths,
    _WorkerWatch,
    workers_info,
)

log = logging.getLogger("blockseg")

BlockFunction = Callable[[Block], BlockOutput]

#: Seconds a stage waits while the cluster has no usable worker before it gives up.
WORKER_WAIT = 180.0
#: Deaths of workers a block only waited on (it had not started) before such
#: a death counts as an attempt anyway, so that no block is resubmitted forever.
UNSTARTED_DEATHS = 8


@dataclass
class _Attempt:
    ok: bool
    output: BlockOutput | None
    worker: str
    error: str = ""
    resource: str | None = None  # one line when the storage, not the block, failed
    committed: bool = False  # the worker committed the block itself; output holds its stats only


START_MARKS = "blockseg-started"


def _run_block(
    function: BlockFunction,
    block: Block,
    start_mark: tuple[str, str] | None = None,
    commit: tuple[str, GraphStore, str | None] | None = None,
) -> _Attempt:
    """Run on a worker: never raise, so the driver sees the worker and traceback.

    With ``start_mark`` the block first tells the scheduler it has started,
    so the driver's timeout counts running time, not time in the queue.
    With ``commit = (stage, store, token)`` the worker commits the block's
    rows and done mark itself and returns only its stats: the rows never
    travel to the driver. The store refuses the commit if ``token`` is no
    longer the stage's (the stage was reset while the block ran). A failed
    commit is a failed attempt like a block that raises.
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
        output = function(block)
        if commit is None:
            return _Attempt(True, output, worker)
        stage, store, token = commit
        store.commit_block(stage, block.block_id, output, token=token)
        return _Attempt(True, BlockOutput(stats=output.stats), worker, committed=True)
    except Exception as error:  # noqa: BLE001 - every failure of a block is reported, not raised
        return _Attempt(False, None, worker, traceback.format_exc(), resource_problem(error))


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
    worker_wait: float = WORKER_WAIT,
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
        Receives each block's output and done mark in one commit: on the
        worker if ``store.workers_write`` (the store is pickled to it and
        reopens there), else in this process.
    retries : int
        How many times a failing block is tried again. A block that was
        running when its worker died (memory limit, a signal) counts as failed.
    window_per_thread : int
        Blocks in flight per worker thread.
    block_ids : iterable of int, optional
        Restrict the run to these blocks.
    token : str
        Part of the task keys, so that tasks of a reset stage never collide
        with stale results the scheduler may still hold. Where the workers
        commit (``store.workers_write``), each commit carries it and the
        store refuses (:class:`~blockseg.graph.base.StaleCommit`) a token
        that is not ``store.stage_state(stage).token``: a caller that passes
        one sets the stage's state first (``store.set_stage_state``, as the
        pipeline's ``reset_stage`` does). Empty: commits carry no token and
        nothing is checked.
    block_timeout : float, optional
        Seconds of running (from when the driver sees the block start on a
        worker, not from submission) after which a block counts as hung: it
        is cancelled, its worker restarted (a hung thread cannot be stopped
        any other way) and the attempt counts as failed.
    resources : dict, optional
        Worker resources each block needs, e.g. ``{"GPU": 1}``.
    worker_wait : float
        Seconds the stage waits while the cluster has no usable worker (none
        at all, or every one paused at its memory limit with nothing running)
        before it raises :class:`NoWorkers`.

    Raises
    ------
    StageFailed
        After all other blocks finished, if some block failed ``retries + 1`` times.
    NoWorkers
        If no usable worker was left for ``worker_wait`` seconds.
    """
    start = time.perf_counter()
    done = store.done_blocks(stage)
    wanted = range(grid.num_blocks) if block_ids is None else sorted(set(block_ids))
    report = StageReport(stage, total=len(wanted))
    report.skipped = sum(1 for b in wanted if b in done)
    todo: Iterator[int] = (b for b in wanted if b not in done)
    window = window_per_thread * _total_threads(client)
    attempts: dict[int, int] = {}  # failed attempts that count against `retries`, plus the running one
    submissions: dict[int, int] = {}  # every submission, for unique task keys
    # drawn on a terminal only, and cleared at the end: the summary line logged below stays, once
    bar = progress_bar(total=len(wanted), initial=report.skipped, desc=stage, enabled=progress)

    in_flight: dict = {}
    run_id = uuid.uuid4().hex
    resource_failures: list[tuple[int, _Attempt]] = []
    # a worker's commit carries the stage's token: the store refuses it once the
    # stage is reset (a block of an earlier run, still going on a stray worker)
    commit_on_worker = (stage, store, token or None) if getattr(store, "workers_write", False) else None

    def refill(count: int) -> None:
        # after a resource error no new block starts: each would fail alike
        if not resource_failures:
            for next_id in _take(todo, count):
                submit(next_id)

    def submit(block_id: int, counted: bool = True) -> None:
        if counted:
            attempts[block_id] = attempts.get(block_id, 0) + 1
        submissions[block_id] = submissions.get(block_id, 0) + 1
        report.submitted += 1
        key = f"{stage}-{token[:8]}-{block_id}-{submissions[block_id]}"
        # Every block marks its start: the timeout counts from it, and a
        # worker's death is blamed only on the blocks that had started on it.
        future = client.submit(
            _run_block, function, grid.block(block_id), (run_id, key), commit_on_worker, key=key, pure=False, retries=0,
            resources=resources or None,
        )
        in_flight[future] = (block_id, None)

    def settle(block_id: int, attempt: _Attempt, refill_window: bool = True) -> None:
        if attempt.ok:
            assert attempt.output is not None
            if not attempt.committed:
                store.commit_block(stage, block_id, attempt.output)
            _accumulate(report.stats, attempt.output.stats)
            report.succeeded += 1
            bar.update(1)
        elif attempt.resource is not None:
            if not resource_failures:
                # info, not error: the driver ends the stage with this problem as its one line
                log.info("%s: block %d on %s: %s; no new block starts", stage, block_id, attempt.worker,
                         attempt.resource)
            log.debug("%s: block %d:\n%s", stage, block_id, attempt.error)
            resource_failures.append((block_id, attempt))
            return
        elif attempts[block_id] <= retries:
            # one line on the terminal; the traceback goes to the log file
            log.warning(
                "%s: block %d failed on %s (%s), retrying", stage, block_id, attempt.worker, _last_line(attempt.error)
            )
            log.debug("%s: block %d, attempt %d:\n%s", stage, block_id, attempts[block_id], attempt.error)
            submit(block_id)
            return
        else:
            roi = str(grid.write_roi(block_id))
            report.failures.append(BlockFailure(block_id, roi, attempt.worker, attempts[block_id], attempt.error))
            log.error(
                "%s: block %d failed for good on %s (%s)", stage, block_id, attempt.worker, _last_line(attempt.error)
            )
            log.debug("%s: block %d, last attempt:\n%s", stage, block_id, attempt.error)
            bar.update(1)
        if refill_window:
            refill(1)

    def lost(future, block_id: int, error: KilledWorker) -> _Attempt | None:
        """A worker died under the block: an attempt if the block ran there, else None (resubmit)."""
        started = future.key in client.get_metadata([START_MARKS, run_id], default={})
        started = started or future.key in (getattr(error.last_worker, "executing", None) or {})
        if not started and submissions[block_id] - attempts[block_id] < UNSTARTED_DEATHS:
            log.debug("%s: block %d waited on a worker that died; resubmitted", stage, block_id)
            return None
        worker, cause = deaths.cause(client, error)
        return _Attempt(False, None, worker, cause)

    # The loop wakes up now and then to look for hung blocks and lost workers.
    poll = WATCH_INTERVAL if block_timeout is None else max(0.05, min(WATCH_INTERVAL, block_timeout / 4))
    watch = _WorkerWatch(worker_wait)
    deaths = _WorkerDeaths()
    deaths.install()
    try:
        for block_id in _take(todo, window):
            submit(block_id)
        while in_flight:
            try:
                finished, _ = wait(list(in_flight), timeout=poll, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            finished = sorted(finished, key=lambda f: in_flight[f][0])
            # Refill the window before fetching results, so the workers have the
            # next blocks while the results travel; then fetch them in one call.
            refill(len(finished))
            ready = [f for f in finished if f.status == "finished"]
            try:
                attempts_by_future = dict(zip(ready, client.gather(ready))) if ready else {}
            except Exception:  # noqa: BLE001 - a result lost with its worker between the check and the fetch
                # each future on its own below: the lost one as a lost worker, the others as they are
                attempts_by_future = {}
            for future in finished:
                block_id, _ = in_flight.pop(future)
                attempt = attempts_by_future.get(future)
                if attempt is None:
                    try:
                        attempt = future.result()
                    except KilledWorker as error:
                        attempt = lost(future, block_id, error)
                    except Exception as error:  # noqa: BLE001 - the task failed in dask itself
                        attempt = _Attempt(
                            False, None, "unknown (worker lost)", "".join(traceback.format_exception(error))
                        )
                future.release()
                if attempt is None:
                    submit(block_id, counted=False)
                else:
                    settle(block_id, attempt, refill_window=False)
            if finished:
                watch.progress()
            elif in_flight:
                watch.check(client, deaths)
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
    finally:
        deaths.uninstall()
        bar.close()
        try:
            client.set_metadata([START_MARKS, run_id], {})
        except Exception:  # noqa: BLE001 - a closing cluster; the marks die with its scheduler
            pass
    report.seconds = time.perf_counter() - start
    log.info(report.summary())
    if resource_failures:
        block_id, attempt = resource_failures[0]
        raise ResourceError(stage, attempt.resource or "", report.skipped + report.succeeded, report.total)
    if report.failures:
        raise StageFailed(report)
    return report


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
