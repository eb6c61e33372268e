"""Run one stage over a block grid on a dask ``distributed`` client.

The driver feeds blocks to the cluster through a bounded window drawn lazily
from the grid, so it never builds a task graph of all blocks; it skips the
blocks the ledger marks done; and it alone commits each finished block's graph
rows together with its done mark. A block that raises is retried; one that
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

import errno
import logging
import os
import re
import signal
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from distributed import Client, wait
from distributed.scheduler import KilledWorker
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


class ResourceError(RuntimeError):
    """A block could not write: no space left, quota exceeded, permission denied.

    Raised once the blocks in flight have finished (no new block starts:
    every one would fail alike); ``str()`` is one line naming the path and
    how many blocks of the stage are done.
    """

    def __init__(self, stage: str, problem: str, done: int, total: int) -> None:
        self.stage, self.problem, self.done, self.total = stage, problem, done, total
        super().__init__(
            f"{stage}: {problem}; {done} of {total} block(s) of the stage done, "
            "the rerun resumes from there once that is fixed"
        )


#: errno values that no retry can cure: the storage, not the block, is at fault.
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def resource_problem(error: BaseException) -> str | None:
    """One line ("no space left on device: PATH") if ``error`` or its causes is a resource error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS:
            what = os.strerror(error.errno).lower()
            where = error.filename if error.filename is not None else "unknown path"
            return f"{what}: {where}"
        error = error.__cause__ or error.__context__
    return None


class NoWorkers(RuntimeError):
    """No worker is left that could run a block, and none came back in time."""


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
    except Exception as error:  # noqa: BLE001 - every failure of a block is reported, not raised
        return _Attempt(False, None, worker, traceback.format_exc(), resource_problem(error))


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
        Receives each block's output and done mark in one commit.
    retries : int
        How many times a failing block is tried again. A block that was
        running when its worker died (memory limit, a signal) counts as failed.
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
    bar = tqdm(
        total=len(wanted), initial=report.skipped, desc=stage, unit="block", disable=not progress, leave=True,
        dynamic_ncols=True,
    )

    in_flight: dict = {}
    run_id = uuid.uuid4().hex
    resource_failures: list[tuple[int, _Attempt]] = []

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
            _run_block, function, grid.block(block_id), (run_id, key), key=key, pure=False, retries=0,
            resources=resources or None,
        )
        in_flight[future] = (block_id, None)

    def settle(block_id: int, attempt: _Attempt, refill_window: bool = True) -> None:
        if attempt.ok:
            assert attempt.output is not None
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
            attempts_by_future = dict(zip(ready, client.gather(ready))) if ready else {}
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


#: Seconds between the driver's looks at the cluster while no block finishes.
WATCH_INTERVAL = 2.0


class _WorkerWatch:
    """Notices a cluster on which no block can run any more (so the stage never waits forever).

    Two states count: no worker at all (the last one died and none came
    back, or none could start) and every worker paused at its memory limit
    with nothing executing (a paused worker takes no new block until its
    memory falls, which it may never do).
    """

    def __init__(self, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self.since: float | None = None

    def progress(self) -> None:
        self.since = None

    def check(self, client: Client, deaths: "_WorkerDeaths") -> None:
        try:
            workers = workers_info(client)
        except Exception:  # noqa: BLE001 - a scheduler that does not answer is no worker either
            workers = {}
        if workers:
            paused = [w for w in workers.values() if w.get("status") == "paused"]
            executing = sum(_executing(w) for w in workers.values())
            if len(paused) < len(workers) or executing:
                self.since = None
                return
            memory = max(w.get("metrics", {}).get("memory", 0) for w in paused)
            limit = max(w.get("memory_limit") or 0 for w in paused)
            problem = (
                f"all {len(paused)} worker(s) are paused at their memory limit "
                f"({_mib(memory)} of {_mib(limit)}) with no block running"
            )
        else:
            last = deaths.last_cause()
            problem = "no dask worker is left" + (f" (the last one: {last})" if last else "")
        now = time.monotonic()
        if self.since is None:
            self.since = now
        elif now - self.since > self.wait_seconds:
            raise NoWorkers(
                f"{problem} for {self.wait_seconds:g} s, so no block can run; "
                "give the workers more memory or use smaller blocks, then rerun to resume"
            )


def _executing(worker: dict) -> int:
    counts = worker.get("metrics", {}).get("task_counts", {})
    return int(counts.get("executing", 0)) + int(worker.get("metrics", {}).get("executing", 0) or 0)


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


class _WorkerDeaths(logging.Handler):
    """Why workers died: the nanny's memory event (any cluster) or its log line (nannies in this process).

    A nanny that stops its worker at the memory limit logs a
    ``worker-restart-memory`` event on the scheduler, which reaches the
    driver wherever the worker ran. A worker killed by a signal (a segfault,
    the kernel's OOM killer) is only logged by its nanny; on a local cluster
    the nannies live in the driver's process, so this handler reads it there.
    """

    _MEMORY = re.compile(r"Worker (\S+) \(pid=(\d+)\) exceeded (\d+)% memory budget")
    _EXIT = re.compile(r"Worker process (\d+) (?:was killed by signal (\d+)|exited with status (\d+)|was killed by unknown)")
    _LOGGERS = ("distributed.nanny", "distributed.nanny.memory")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.by_pid: dict[int, str] = {}
        self.memory_pids: set[int] = set()
        self.last: str | None = None

    def install(self) -> None:
        for name in self._LOGGERS:
            logging.getLogger(name).addHandler(self)

    def uninstall(self) -> None:
        for name in self._LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a log record we cannot format tells us nothing
            return
        memory = self._MEMORY.search(message)
        if memory:
            self.memory_pids.add(int(memory.group(2)))
            return
        exit_ = self._EXIT.search(message)
        if exit_:
            pid = int(exit_.group(1))
            if exit_.group(2):
                number = int(exit_.group(2))
                try:
                    name = signal.Signals(number).name
                except ValueError:
                    name = "an unknown signal"
                self.by_pid[pid] = f"killed by signal {number} ({name})"
            elif exit_.group(3):
                self.by_pid[pid] = f"exited with status {exit_.group(3)}"
            else:
                self.by_pid[pid] = "killed by an unknown signal"

    def cause(self, client: Client, error: KilledWorker) -> tuple[str, str]:
        """The dead worker's address and one line on why it died."""
        last = error.last_worker
        address = getattr(last, "address", None) or "unknown worker"
        pid = getattr(last, "pid", None)
        limit = getattr(last, "memory_limit", 0) or 0
        cause = None
        # The nanny's log line and event may trail the scheduler's news of the death a little.
        for _ in range(10):
            cause = self._memory_cause(client, address, pid, limit) or (
                f"worker died: {self.by_pid[pid]}" if pid in self.by_pid else None
            )
            if cause:
                break
            time.sleep(0.1)
        if cause is None:
            cause = "worker died (no cause known: killed from outside, or its node failed; see the worker logs)"
        self.last = cause
        return address, cause

    def _memory_cause(self, client: Client, address: str, pid: int | None, limit: int) -> str | None:
        rss = None
        if pid in self.memory_pids:
            rss = 0
        try:
            events = client.get_events("worker-restart-memory")
        except Exception:  # noqa: BLE001 - an older scheduler without events: the log line may still tell
            events = ()
        for _, event in events:
            if isinstance(event, dict) and (event.get("worker") == address or event.get("pid") == pid):
                rss = event.get("rss", 0)
        if rss is None:
            return None
        used = f" (its process used {_mib(rss)})" if rss else ""
        return f"worker died: memory limit {_mib(limit)} exceeded{used}"

    def last_cause(self) -> str | None:
        return self.last


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
