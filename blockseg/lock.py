"""One run per output folder: a lock file that works on a shared filesystem.

``OUTPUT/blockseg.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on
local filesystems and on NFSv3+ / Lustre / GPFS), and holds the holder's
host, pid, start time and a heartbeat timestamp that a thread of the holder
refreshes every :data:`HEARTBEAT` seconds. Another run finds it and refuses
to start, naming the holder. A lock is stale, and taken over with a warning,
when its heartbeat is older than :data:`STALE` seconds (the holder's node
died or the holder was killed), or at once when the holder ran on this host
and its process is gone. A takeover itself is serialised by a second
``O_EXCL`` file, so two runs that find the same stale lock never both win.

>>> lock = OutputLock(folder)            # doctest: +SKIP
>>> with lock:                           # doctest: +SKIP
...     run_the_pipeline()
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from blockseg.config import ConfigError

log = logging.getLogger("blockseg")

LOCK_NAME = "blockseg.lock"
#: Seconds between two refreshes of the holder's heartbeat.
HEARTBEAT = 10.0
#: Seconds without a heartbeat after which a lock counts as abandoned.
STALE = 120.0


class OutputLocked(ConfigError):
    """The output folder is in use by another run (exit code 2, like a bad config)."""


def _process_started(pid: int) -> float | None:
    """When process ``pid`` of this host started (epoch seconds), None if there is no such process."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:  # without psutil: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and kin: the process is gone
        return None


def _describe_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


class LockInfo(dict):
    """The content of a lock file."""

    def age(self, now: float | None = None) -> float:
        """Seconds since the holder's last heartbeat."""
        return (time.time() if now is None else now) - float(self.get("heartbeat", 0))

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why the lock is abandoned, or None while its holder lives."""
        if self.get("host") == socket.gethostname():
            started = _process_started(int(self.get("pid", -1)))
            if started is None:
                return f"its process {self.get('pid')} is gone"
            if started and abs(started - float(self.get("pid_started", started))) > 1:
                return f"process {self.get('pid')} is another program now"
        age = self.age(now)
        if age > STALE:
            return f"no heartbeat for {age:.0f} s"
        return None

    def holder(self) -> str:
        return (
            f"host {self.get('host')}, pid {self.get('pid')}, started {_describe_time(float(self.get('started', 0)))}, "
            f"last heartbeat {max(0.0, self.age()):.0f} s ago"
        )


def read_lock(folder: Path) -> LockInfo | None:
    """The lock of an output folder, or None if there is none (or it cannot be read)."""
    try:
        return LockInfo(json.loads((Path(folder) / LOCK_NAME).read_text()))
    except (OSError, ValueError):
        return None


class OutputLock:
    """The lock of one output folder, held from :meth:`acquire` to :meth:`release`.

    Parameters
    ----------
    folder : path
        The run's output folder (created if missing).
    command : str
        What the holder runs, shown to whoever is refused.
    """

    def __init__(self, folder: Path, command: str = "blockseg run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.info: LockInfo | None = None

    def _content(self) -> LockInfo:
        now = time.time()
        if self.info is None:
            pid = os.getpid()
            self.info = LockInfo(
                host=socket.gethostname(), pid=pid, pid_started=_process_started(pid) or 0.0, started=now,
                command=self.command, token=self.token,
            )
        self.info["heartbeat"] = now
        return self.info

    def _create(self) -> bool:
        """Create the lock file atomically; False if one exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(self._content()))
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def acquire(self) -> None:
        """Take the lock, or raise :class:`OutputLocked` naming its holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                break
            held = read_lock(self.folder)
            if held is None:
                # half written by a holder that is creating it right now, or removed meanwhile
                time.sleep(0.2)
                held = read_lock(self.folder)
                if held is None:
                    if self._create():
                        break
                    raise OutputLocked(f"output {self.folder} is in use: its lock {self.path} cannot be read")
            reason = held.stale_reason()
            if reason is None:
                raise OutputLocked(
                    f"output {self.folder} is in use by another run ({held.holder()}); "
                    f"wait for it to finish, or stop it and rerun (its lock: {self.path})"
                )
            if self._take_over(held, reason):
                break
        else:
            raise OutputLocked(f"output {self.folder} is in use: could not take its lock {self.path}")
        self._thread = threading.Thread(target=self._beat, name="blockseg-lock-heartbeat", daemon=True)
        self._thread.start()

    def _take_over(self, stale: LockInfo, reason: str) -> bool:
        """Replace a stale lock; only one of several runs that found it succeeds."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a takeover that died half-way leaves its guard behind
                if time.time() - guard.stat().st_mtime > 60:
                    guard.unlink()
            except OSError:
                pass
            return False
        os.close(fd)
        try:
            current = read_lock(self.folder)
            if current is not None and current.get("token") != stale.get("token"):
                return False  # someone else took it meanwhile: look again
            self.path.unlink(missing_ok=True)
            if not self._create():
                return False
        finally:
            guard.unlink(missing_ok=True)
        log.warning("took over the lock of %s from a run that stopped (%s; %s)", self.folder, stale.holder(), reason)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                current = read_lock(self.folder)
                if current is None or current.get("token") != self.token:
                    log.warning("the lock of %s was taken by another run; this run no longer holds it", self.folder)
                    return
                scratch = self.path.with_name(f"{LOCK_NAME}.{self.token}")
                scratch.write_text(json.dumps(self._content()))
                os.replace(scratch, self.path)  # atomic: readers see the old or the new heartbeat
            except OSError as error:  # a full or unreachable disk: the run itself will say so
                log.debug("could not refresh the lock of %s: %s", self.folder, error)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        current = read_lock(self.folder)
        if current is not None and current.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def status_line(folder: Path) -> str | None:
    """One line on the run that holds the output, for ``blockseg status``; None if no lock."""
    held = read_lock(folder)
    if held is None:
        return None
    reason = held.stale_reason()
    if reason is None:
        return f"a run is active on this output: {held.get('command', 'blockseg')} ({held.holder()})"
    return f"a run stopped without releasing its lock ({held.holder()}; {reason}): the next run takes it over"
