"""The driver's watch over the dask workers while a stage runs.

:func:`workers_info` asks the scheduler about every worker;
:class:`_WorkerWatch` notices a cluster on which no block can run any more
(no worker left, or all paused at their memory limit) and raises
:class:`blockseg.stage_errors.NoWorkers`; :class:`_WorkerDeaths` finds out
why a worker died (memory limit, signal, exit status) from the nannies'
events and log lines; :func:`_abandon` cancels a hung block and restarts its
worker.
"""

from __future__ import annotations

import logging
import re
import signal
import time

from distributed import Client
from distributed.scheduler import KilledWorker

from blockseg.stage_errors import NoWorkers

log = logging.getLogger("blockseg")


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
